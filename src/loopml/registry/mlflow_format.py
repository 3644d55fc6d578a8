"""Read MLflow model directories into loopml's format, and write loopml models as MLflow model directories.

Reading loads the model with its own library and saves it again with loopml's flavors (text, JSON or ONNX
formats where the library has one), keeping the signature, input example, requirements and Python version.
Writing produces what MLflow 3 itself writes: an MLmodel with the native flavor and python_function,
requirements.txt, python_env.yaml, conda.yaml and the input example, so `mlflow.pyfunc.load_model` and the
native loaders (mlflow.sklearn / lightgbm / xgboost) load it. MLflow refuses to unpickle scikit-learn models
unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true is set where it loads them.
"""

from __future__ import annotations

import json
import logging
import pickle
import platform
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from loopml.clock import Clock, SystemClock
from loopml.errors import ValidationError
from loopml.registry import flavors
from loopml.registry.flavors import lightgbm as lightgbm_flavor
from loopml.registry.flavors import sklearn as sklearn_flavor
from loopml.registry.flavors import xgboost as xgboost_flavor
from loopml.registry.flavors._common import read
from loopml.registry.model_file import ModelFile
from loopml.registry.signature import Signature, infer_signature

MLMODEL = "MLmodel"
CONVERTIBLE = ("sklearn", "lightgbm", "xgboost", "onnx", "python_function")
_LOOPML_KEYS = ("features", "feature_service", "data_version", "baseline", "promotion_policy")
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- reading


def read_mlflow_model(
    path: Path | str, *, model_name: str | None = None, allow_version_mismatch: bool = False
) -> tuple[ModelFile, dict[str, bytes]]:
    """An MLflow model directory as a loopml model file and files (the model converted to loopml's flavors)."""
    root = Path(path)
    mlmodel = _read_mlmodel(root)
    flavors_section = mlmodel["flavors"]
    files, flavors_config = _convert(root, flavors_section, allow_version_mismatch)
    signature = _signature(mlmodel)
    example = _input_example(root, mlmodel)
    if not signature.inputs and example:
        signature = infer_signature(pd.DataFrame(example))
    loopml_metadata = (mlmodel.get("metadata") or {}).get("loopml") or {}
    model_file = ModelFile(
        model_name=model_name or loopml_metadata.get("model_name") or root.resolve().name,
        flavors=flavors_config,
        signature=signature,
        input_example=example,
        requirements=_requirements(root, flavors_config),
        python_version=_python_version(root, flavors_section),
        run_id=mlmodel.get("run_id"),
        created_at=_created_at(mlmodel.get("utc_time_created")),
        extensions={"x-mlflow": _provenance(mlmodel)},
        **{key: _restore(key, loopml_metadata[key]) for key in _LOOPML_KEYS if loopml_metadata.get(key)},
    )
    ModelFile.from_dict(model_file.to_dict())  # the checks every reader of the model file will run
    return model_file, files


def _read_mlmodel(root: Path) -> dict[str, Any]:
    path = root / MLMODEL
    if not path.is_file():
        raise ValidationError(f"{path} does not exist: {root} is not an MLflow model directory.")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{path} is not valid YAML: {exc}.") from exc
    if not isinstance(data, dict):
        raise ValidationError(f"{path} must be a YAML mapping, got {type(data).__name__}.")
    if not isinstance(data.get("flavors"), dict) or not data["flavors"]:
        raise ValidationError(f"{path}: flavors is missing or empty; the MLmodel file is broken.")
    return data


def _convert(
    root: Path, section: Mapping[str, Any], allow_version_mismatch: bool
) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """The model loaded with its library and saved with loopml's flavors (loader-module code is copied)."""
    if "sklearn" in section:
        return flavors.save_model(_sklearn(root, _conf(section, "sklearn"), allow_version_mismatch))
    if "lightgbm" in section:
        return flavors.save_model(_lightgbm(root, _conf(section, "lightgbm"), allow_version_mismatch))
    if "xgboost" in section:
        return flavors.save_model(_xgboost(root, _conf(section, "xgboost")))
    if "onnx" in section:
        import onnx

        return flavors.save_model(onnx.load_from_string(_file(root, _conf(section, "onnx"), "data", "onnx")))
    pyfunc = section.get("python_function")
    if isinstance(pyfunc, Mapping) and str(pyfunc.get("loader_module", "mlflow.")).split(".")[0] != "mlflow":
        files, config = _loader_module(root, pyfunc)
        return files, {"pyfunc": config}
    if isinstance(pyfunc, Mapping) and "python_model" in pyfunc:
        raise ValidationError(
            f"{root / MLMODEL}: flavors.python_function holds a cloudpickled mlflow.pyfunc.PythonModel "
            f"({pyfunc['python_model']}), which cannot load without MLflow. Port it to "
            "loopml.registry.flavors.pyfunc.PythonModel (state in artifacts), or save it with loader_module."
        )
    raise ValidationError(
        f"{root / MLMODEL}: flavors {sorted(section)} cannot be converted; loopml reads the MLflow flavors "
        f"{', '.join(CONVERTIBLE)} (python_function with a loader_module of your own)."
    )


def _conf(section: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    conf = section[name]
    if not isinstance(conf, Mapping):
        raise ValidationError(f"{MLMODEL}: flavors.{name} must be a mapping, got {conf!r}.")
    return conf


def _file(root: Path, conf: Mapping[str, Any], key: str, flavor: str) -> bytes:
    relative = conf.get(key)
    if not isinstance(relative, str):
        raise ValidationError(f"{root / MLMODEL}: flavors.{flavor}.{key} is missing (the model file's path).")
    path = root / relative
    if not path.is_file():
        raise ValidationError(f"{root / MLMODEL}: flavors.{flavor}.{key} names {relative}, which is missing.")
    return path.read_bytes()


def _unpickle(root: Path, conf: Mapping[str, Any], key: str, flavor: str) -> Any:
    data = _file(root, conf, key, flavor)
    serialization = conf.get("serialization_format", "cloudpickle" if flavor == "lightgbm" else "pickle")
    if serialization == "skops":
        try:
            import skops.io
        except ImportError:
            raise ValidationError(
                f"{root / MLMODEL}: the {flavor} model is stored in the skops format (MLflow 3's default); "
                "install skops (pip install skops) to read it."
            ) from None
        return skops.io.loads(data, trusted=conf.get("skops_trusted_types") or [])
    if serialization not in ("pickle", "cloudpickle"):
        raise ValidationError(
            f"{root / MLMODEL}: flavors.{flavor}.serialization_format is {serialization!r}; loopml reads "
            "pickle, cloudpickle and skops."
        )
    return sklearn_flavor.unpickle(data, serialization)


def _sklearn(root: Path, conf: Mapping[str, Any], allow_version_mismatch: bool) -> Any:
    sklearn_flavor.check_version(conf.get("sklearn_version"), allow_version_mismatch)
    return _unpickle(root, conf, "pickled_model", "sklearn")


def _lightgbm(root: Path, conf: Mapping[str, Any], allow_version_mismatch: bool) -> Any:
    import lightgbm as lgb

    if conf.get("model_class", "lightgbm.basic.Booster") == "lightgbm.basic.Booster":
        return lgb.Booster(model_str=_file(root, conf, "data", "lightgbm").decode())
    if conf.get("lgb_version") not in (None, lgb.__version__) and not allow_version_mismatch:
        raise ValidationError(
            f"{root / MLMODEL}: the LightGBM estimator was pickled with lightgbm {conf['lgb_version']} but "
            f"{lgb.__version__} is installed; install lightgbm=={conf['lgb_version']} to convert it (or pass "
            "allow_version_mismatch=True)."
        )
    return _unpickle(root, conf, "data", "lightgbm")


def _xgboost(root: Path, conf: Mapping[str, Any]) -> Any:
    import xgboost as xgb

    class_name = str(conf.get("model_class", "xgboost.core.Booster")).rsplit(".", 1)[-1]
    if class_name not in xgboost_flavor.MODEL_CLASSES:
        raise ValidationError(
            f"{root / MLMODEL}: flavors.xgboost.model_class is {conf.get('model_class')!r}; loopml reads "
            f"{', '.join(xgboost_flavor.MODEL_CLASSES)}."
        )
    model = getattr(xgb, class_name)()
    model.load_model(bytearray(_file(root, conf, "data", "xgboost")))
    return model


def _loader_module(root: Path, conf: Mapping[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """An MLflow loader-module model: its code and data files, copied as they are."""
    config: dict[str, Any] = {"loader_module": conf["loader_module"]}
    files: dict[str, bytes] = {}
    for key in ("code", "data"):
        relative = conf.get(key)
        if not relative:
            continue
        source = root / relative
        if not source.exists():
            raise ValidationError(
                f"{root / MLMODEL}: flavors.python_function.{key} names {relative}, which is missing."
            )
        found = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        files.update(
            {p.relative_to(root).as_posix(): p.read_bytes() for p in found if "__pycache__" not in p.parts}
        )
        config[key] = str(relative)
    return files, config


def _signature(mlmodel: Mapping[str, Any]) -> Signature:
    if not mlmodel.get("signature"):
        return Signature()
    return Signature.from_mlflow(mlmodel["signature"], f"{MLMODEL}: signature")


def _input_example(root: Path, mlmodel: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """MLflow's input_example.json (split or records orient) as records; other shapes are left out."""
    info = mlmodel.get("saved_input_example_info")
    if not isinstance(info, Mapping) or not info.get("artifact_path"):
        return None
    path = root / info["artifact_path"]
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("Ignoring the MLflow input example %s: %s", path, exc)
        return None
    if isinstance(data, Mapping) and "dataframe_split" in data:
        data = data["dataframe_split"]
    if isinstance(data, Mapping) and "columns" in data and "data" in data:
        return [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]
    if isinstance(data, Mapping) and "dataframe_records" in data:
        data = data["dataframe_records"]
    if isinstance(data, list) and all(isinstance(row, Mapping) for row in data):
        return [dict(row) for row in data]
    logger.warning(
        "Ignoring the MLflow input example %s: it is not a DataFrame in split or records form.", path
    )
    return None


def _requirements(root: Path, flavors_config: Mapping[str, Any]) -> tuple[str, ...]:
    """requirements.txt without MLflow itself (the converted model does not need it) plus the flavor's pins."""
    lines: dict[str, str] = {}
    path = root / "requirements.txt"
    if path.is_file():
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            name = _package(line)
            if name not in ("mlflow", "mlflow-skinny", "skops", "cloudpickle"):
                lines[name] = line
    for line in flavors.requirements(flavors_config):
        lines.setdefault(_package(line), line)
    return tuple(sorted(lines.values()))


def _package(line: str) -> str:
    for separator in ("==", ">=", "<=", "~=", "!=", ">", "<", "[", ";", " "):
        line = line.split(separator, 1)[0]
    return line.strip().lower().replace("_", "-")


def _python_version(root: Path, section: Mapping[str, Any]) -> str | None:
    path = root / "python_env.yaml"
    if path.is_file():
        try:
            env = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValidationError(f"{path} is not valid YAML: {exc}.") from exc
        if isinstance(env, Mapping) and env.get("python"):
            return str(env["python"])
    pyfunc = section.get("python_function")
    return (
        str(pyfunc["python_version"])
        if isinstance(pyfunc, Mapping) and pyfunc.get("python_version")
        else None
    )


def _created_at(value: Any) -> str | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC).isoformat()
    except ValueError:
        return None


def _provenance(mlmodel: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("model_uuid", "model_id", "mlflow_version", "artifact_path", "utc_time_created")
    return {
        "flavors": sorted(mlmodel["flavors"]),
        **{key: str(mlmodel[key]) for key in keys if mlmodel.get(key) is not None},
    }


def _restore(key: str, value: Any) -> Any:
    return tuple(value) if key == "features" else value


# ---------------------------------------------------------------- writing


def write_mlflow_model(
    model_file: ModelFile,
    files: Mapping[str, bytes],
    dest: Path | str,
    *,
    allow_version_mismatch: bool = False,
    clock: Clock | None = None,
) -> Path:
    """Write the model as an MLflow 3 model directory at `dest` (new or empty) and return it."""
    root = Path(dest)
    if root.exists() and any(root.iterdir()):
        raise ValidationError(f"{root} is not empty; write the MLflow model to a new or empty directory.")
    native, pyfunc_conf, written, extra_requirements = _native(model_file, files, allow_version_mismatch)
    python_version = model_file.python_version or platform.python_version()
    pyfunc_conf = {
        **pyfunc_conf,
        "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
        "python_version": python_version,
    }
    flavors_section = {**native, "python_function": pyfunc_conf}
    created = model_file.created_at or (clock or SystemClock()).now().isoformat()
    mlmodel: dict[str, Any] = {
        "flavors": flavors_section,
        "model_uuid": uuid.uuid4().hex,
        "utc_time_created": _mlflow_time(created),
        "metadata": {"loopml": _loopml_metadata(model_file)},
    }
    if model_file.run_id:
        mlmodel["run_id"] = model_file.run_id
    if model_file.signature.inputs:
        mlmodel["signature"] = model_file.signature.to_mlflow()
    if model_file.input_example:
        written.update(_example_files(model_file.input_example))
        mlmodel["saved_input_example_info"] = {
            "artifact_path": "input_example.json",
            "type": "dataframe",
            "pandas_orient": "split",
            "serving_input_path": "serving_input_example.json",
        }
    requirements = _merge_requirements(model_file.requirements, extra_requirements)
    written["requirements.txt"] = ("\n".join(requirements) + "\n").encode()
    written["python_env.yaml"] = _yaml(
        {
            "python": python_version,
            "build_dependencies": ["pip", "setuptools", "wheel"],
            "dependencies": ["-r requirements.txt"],
        }
    )
    written["conda.yaml"] = _yaml(
        {
            "channels": ["conda-forge"],
            "dependencies": [f"python={python_version}", "pip", {"pip": requirements}],
            "name": "mlflow-env",
        }
    )
    mlmodel["model_size_bytes"] = sum(len(data) for data in written.values())
    written[MLMODEL] = _yaml(mlmodel)
    for relative, data in written.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def _native(
    model_file: ModelFile, files: Mapping[str, bytes], allow_version_mismatch: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes], list[str]]:
    """(native flavor section, python_function settings, files to write, extra requirements)."""
    present = model_file.flavors
    if "lightgbm" in present:
        return _write_lightgbm(model_file, files)
    if "xgboost" in present:
        conf = present["xgboost"]
        data = read(files, conf["path"], "xgboost")
        module = "core" if conf.get("model_class", "Booster") == "Booster" else "sklearn"
        native = {
            "xgboost": {
                "code": None,
                "data": "model.ubj",
                "model_class": f"xgboost.{module}.{conf.get('model_class', 'Booster')}",
                "model_format": "ubj",
                "xgb_version": conf.get("xgboost_version"),
            }
        }
        return native, {"loader_module": "mlflow.xgboost", "data": "model.ubj"}, {"model.ubj": data}, []
    if "sklearn" in present:
        loaded = flavors.load_model(
            files, model_file, "sklearn", allow_version_mismatch=allow_version_mismatch
        )
        data = pickle.dumps(loaded.estimator, protocol=pickle.DEFAULT_PROTOCOL)
        native = {
            "sklearn": {
                "code": None,
                "pickled_model": "model.pkl",
                "serialization_format": "pickle",
                "sklearn_version": present["sklearn"].get("sklearn_version"),
            }
        }
        settings = {"loader_module": "mlflow.sklearn", "model_path": "model.pkl", "predict_fn": "predict"}
        return native, settings, {"model.pkl": data}, []
    pyfunc = present.get("pyfunc") or {}
    if pyfunc.get("loader_module"):
        copied = dict(files)
        settings = {key: pyfunc[key] for key in ("loader_module", "data", "code") if pyfunc.get(key)}
        return {}, settings, copied, []
    raise ValidationError(
        f"Model {model_file.model_name!r} has the flavors {sorted(present)}; MLflow export supports sklearn, "
        "lightgbm, xgboost and loader-module pyfunc models."
    )


def _write_lightgbm(
    model_file: ModelFile, files: Mapping[str, bytes]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes], list[str]]:
    import lightgbm as lgb

    conf = model_file.flavors["lightgbm"]
    loaded = flavors.load_model(files, model_file, "lightgbm")
    base = {"code": None, "lgb_version": conf.get("lightgbm_version") or lgb.__version__}
    if isinstance(loaded, lightgbm_flavor.LightGBMClassifier) and loaded.model_class == "LGBMClassifier":
        data = pickle.dumps(loaded.to_estimator(), protocol=pickle.DEFAULT_PROTOCOL)
        native = {
            "lightgbm": {
                **base,
                "data": "model.pkl",
                "model_class": "lightgbm.sklearn.LGBMClassifier",
                "serialization_format": "pickle",
            }
        }
        sklearn_pin = sklearn_flavor.requirements({"sklearn_version": _installed_sklearn()})
        return (
            native,
            {"loader_module": "mlflow.lightgbm", "data": "model.pkl"},
            {"model.pkl": data},
            sklearn_pin,
        )
    text = read(files, conf["path"], "lightgbm")
    native = {"lightgbm": {**base, "data": "model.lgb", "model_class": "lightgbm.basic.Booster"}}
    return native, {"loader_module": "mlflow.lightgbm", "data": "model.lgb"}, {"model.lgb": text}, []


def _installed_sklearn() -> str:
    import sklearn

    return sklearn.__version__


def _example_files(records: list[dict[str, Any]]) -> dict[str, bytes]:
    columns = list(dict.fromkeys(key for record in records for key in record))
    split = {"columns": columns, "data": [[record.get(c) for c in columns] for record in records]}
    return {
        "input_example.json": json.dumps(split).encode(),
        "serving_input_example.json": json.dumps({"dataframe_split": split}, indent=2).encode(),
    }


def _merge_requirements(pinned: tuple[str, ...], extra: list[str]) -> list[str]:
    lines = {_package(line): line for line in pinned}
    for line in extra:
        lines.setdefault(_package(line), line)
    lines.setdefault("mlflow", "mlflow")
    return sorted(lines.values())


def _loopml_metadata(model_file: ModelFile) -> dict[str, Any]:
    data = model_file.to_dict()
    return {"model_name": model_file.model_name, **{key: data[key] for key in _LOOPML_KEYS if data.get(key)}}


def _mlflow_time(iso: str) -> str:
    """MLflow's utc_time_created form: naive UTC, 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(sep=" ", timespec="microseconds")


def _yaml(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()
