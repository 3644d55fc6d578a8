"""From a trained model to what a version stores: the flavors' files and the model file describing them."""

from __future__ import annotations

from typing import Any

import pandas as pd

from loopml.data.profiles import REFERENCE_FILE
from loopml.registry.model_dir import build_model_file
from loopml.registry.model_file import ModelFile
from loopml.registry.onnx_export import export_onnx, onnx_flavor
from loopml.registry.signature import infer_signature
from loopml.training.evaluation import predict_scores
from loopml.training.pipeline import TrainedModel


def package(
    trained: TrainedModel,
    *,
    feature_service: str | None = None,
    promotion_policy: dict[str, Any] | None = None,
    onnx: bool = False,
) -> tuple[ModelFile, dict[str, bytes]]:
    """The files of a trained model and its model file; `onnx` adds an ONNX copy checked against the original."""
    example = trained.input_example
    outputs = pd.DataFrame({"score": predict_scores(trained.estimator, example)})
    model_file, files = build_model_file(
        trained.estimator,
        model_name=trained.spec.model_name,
        signature=infer_signature(example, outputs),
        input_example=example,
        features=trained.spec.features,
        feature_service=feature_service,
        data_version={
            "dataset_id": trained.snapshot.id,
            "content_hash": trained.snapshot.content_hash,
            "feature_view_versions": trained.snapshot.spec.get("feature_view_versions", {}),
        },
        baseline=trained.baseline,
        promotion_policy=promotion_policy,
        run_id=trained.run_id,
    )
    files = {**files, REFERENCE_FILE: trained.reference.to_json()}
    if onnx:
        onnx_files, config = onnx_flavor(*export_onnx(trained.estimator, example))
        files = {**files, **onnx_files}
        model_file = ModelFile.from_dict(
            {**model_file.to_dict(), "flavors": {**model_file.flavors, "onnx": config}}
        )
    return model_file, files
