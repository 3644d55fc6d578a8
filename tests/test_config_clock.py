from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loopml.clock import FileClock, SimulatedClock
from loopml.config import load_config, write_config
from loopml.errors import ConfigError


def test_init_writes_embedded_defaults_and_refuses_to_overwrite(tmp_path: Path) -> None:
    write_config(tmp_path, "shop")
    config = load_config(tmp_path, environ={})
    assert config["project"] == "shop"
    assert config["metadata"]["url"].startswith("sqlite:///.loopml/")
    with pytest.raises(ConfigError, match="already exists"):
        write_config(tmp_path, "shop")


def test_environment_overrides_any_key(tmp_path: Path) -> None:
    write_config(tmp_path, "shop")
    config = load_config(
        tmp_path,
        environ={
            "LOOPML_METADATA__URL": "postgresql+psycopg://db/x",
            "LOOPML_SERVING__PORT": "9000",
            "HOME": "/root",
        },
    )
    assert config["metadata"]["url"] == "postgresql+psycopg://db/x"
    assert config["serving"]["port"] == 9000


def test_config_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run `loopml init`"):
        load_config(tmp_path, environ={})
    (tmp_path / "loopml.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path, environ={})
    write_config(tmp_path, "x", overwrite=True)
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(tmp_path, environ={"LOOPML_PROJECT__NAME": "y"})


def test_simulated_clock_moves_only_when_told() -> None:
    clock = SimulatedClock(datetime(2026, 1, 1))
    assert clock.now() == datetime(2026, 1, 1, tzinfo=UTC)
    assert clock.advance(timedelta(days=2)) == datetime(2026, 1, 3, tzinfo=UTC)


def test_file_clock_is_shared_between_instances(tmp_path: Path) -> None:
    writer = FileClock(tmp_path / "clock", start=datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC))
    reader = FileClock(tmp_path / "clock")
    assert reader.now() == datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    writer.advance(timedelta(hours=1))
    assert reader.now() == datetime(2026, 3, 1, 13, 30, 15, 123456, tzinfo=UTC)
    writer.close()
    reader.close()
