"""Command-line programs (segment, evaluate_semantic_kitti, convert_checkpoint), installed as torchsparse.tools."""
