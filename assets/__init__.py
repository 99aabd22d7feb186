"""Data shipped inside the package, installed as torchsparse.assets: one real SemanticKITTI scan with its labels
(frame 000000 of sequence 08, CC BY-NC-SA 3.0; see semantickitti/README.md). The command-line tools read it from
here, so a regular (non-editable) install finds it too."""

from pathlib import Path

__all__ = ["sample_labels", "sample_scan"]


def sample_scan() -> Path:
    """The bundled SemanticKITTI scan: float32 (123389, 4) x, y, z, remission (`datasets.read_scan` reads it)."""
    return Path(__file__).resolve().parent / "semantickitti" / "000000.bin"


def sample_labels() -> Path:
    """The bundled scan's ground truth (uint32 per point: semantic id low 16 bits, instance id high 16)."""
    return sample_scan().with_suffix(".label")
