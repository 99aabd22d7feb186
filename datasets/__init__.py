"""Dataset loaders, transforms and metrics; imported as torchsparse.datasets."""
