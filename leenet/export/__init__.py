"""Deployment: staged ONNX export of an ExitNet, read by the ``leenet-runtime`` router; int8 stage graphs."""

from leenet.export.int8 import LabeledImages, export_int8
from leenet.export.metadata import load_run, run_splits, split_arrays
from leenet.export.onnx import DEFAULT_OPSET, StageGraph, export_onnx
from leenet.export.quant_report import QuantReport, read_report
from leenet.export.quantize import QuantizeOptions, calibration_sample, quantize_graph
from leenet.export.refit import SavedPolicy

__all__ = ["DEFAULT_OPSET", "LabeledImages", "QuantReport", "QuantizeOptions", "SavedPolicy", "StageGraph",
           "calibration_sample", "export_int8", "export_onnx", "load_run", "quantize_graph", "read_report",
           "run_splits", "split_arrays"]
