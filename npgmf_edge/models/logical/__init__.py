"""NPGMF logical branch: OCE bottleneck, normal codebooks, LeWin fusion, RD-style decoder, the network."""

from npgmf_edge.models.logical.anomaly_map import cosine_loss, logical_anomaly_map
from npgmf_edge.models.logical.torch_model import LogicalForward, NpgmfLogicalNet

__all__ = ["LogicalForward", "NpgmfLogicalNet", "cosine_loss", "logical_anomaly_map"]
