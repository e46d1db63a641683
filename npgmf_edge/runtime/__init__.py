"""The deployment runtime: load a bundle and inspect images with numpy, OpenCV, onnxruntime / TensorRT
and faiss only (no torch, timm or open_clip). The manifest is its only contract with `export`."""

from npgmf_edge.runtime.detector import BundleDetector
from npgmf_edge.runtime.inspector import Inspector
from npgmf_edge.runtime.manifest import Manifest, read_manifest

__all__ = ["BundleDetector", "Inspector", "Manifest", "read_manifest"]
