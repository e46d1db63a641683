"""Dataset-level evaluation: score maps on disk (official MVTec LOCO AD layout), all metrics per subset,
and a text table for the command line. The metrics themselves live in `npgmf_edge.metrics`.

Example:
    >>> maps = read_maps(Path("maps"), dataset)
    >>> print(format_results_table({"fused": evaluate_maps(dataset, maps)}))
"""

from npgmf_edge.evaluation.evaluate import ALL, MEAN, evaluate_maps, fpr_key
from npgmf_edge.evaluation.maps_io import MAPS_LAYOUT, map_path, read_map_tiff, read_maps, write_maps_tiff
from npgmf_edge.evaluation.table import format_fusion_table, format_results_table

__all__ = [
    "ALL",
    "MAPS_LAYOUT",
    "MEAN",
    "evaluate_maps",
    "format_fusion_table",
    "format_results_table",
    "fpr_key",
    "map_path",
    "read_map_tiff",
    "read_maps",
    "write_maps_tiff",
]
