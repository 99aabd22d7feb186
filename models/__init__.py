"""Model zoo built on torchsparse (MinkUNet, SPVCNN, SPVNAS, BEVFusion); imported as torchsparse.models."""
