"""bnwvad.export: checkpoint -> folded-BN ONNX graph (fp32 / fp16 / int8) -> TensorRT engine.

    from bnwvad.export import export_onnx
    report = export_onnx("xd_best.pkl", "model.onnx", preset="xd", precision="fp16")

Needs torch and onnx (the `export` extra); TensorRT is imported only by `build_engine`.
"""
from .exporter import DEFAULT_OPSET, PRECISIONS, ExportError, ExportReport, export_onnx, load_source
from .fold import DeployModel, FoldError, fold
from .graph import GraphError, build_graph
from .metadata import MetadataError, read_metadata
from .trt_engine import EngineReport, Profile, TensorRTError, build_engine
from .verify import VerificationError, VerificationReport, default_cases, verify_runner

__all__ = [
    "DEFAULT_OPSET", "DeployModel", "EngineReport", "ExportError", "ExportReport", "FoldError",
    "GraphError", "MetadataError", "PRECISIONS", "Profile",
    "TensorRTError", "VerificationError", "VerificationReport", "build_engine", "build_graph",
    "default_cases", "export_onnx", "fold", "load_source", "read_metadata", "verify_runner",
]
