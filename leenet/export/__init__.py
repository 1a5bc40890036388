"""Deployment: staged ONNX export of an ExitNet, read by the ``leenet-runtime`` router."""

from leenet.export.onnx import DEFAULT_OPSET, StageGraph, export_onnx

__all__ = ["DEFAULT_OPSET", "StageGraph", "export_onnx"]
