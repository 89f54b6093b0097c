"""Which class-archive and compiler options a JVM gets (the archives themselves:
tests/integration/test_class_archives.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse.jvm import FOLDER, archive_options, jit_options
from pulse.runtime import Plan, Runtime, Until
from pulse.settings import PulseSettings


def test_an_archive_is_mapped_only_when_it_exists_and_is_wanted(tmp_path: Path) -> None:
    assert archive_options(tmp_path, "kafka-broker", "use") == []
    archive = tmp_path / FOLDER / "kafka-broker.jsa"
    archive.parent.mkdir()
    archive.write_bytes(b"")
    assert archive_options(tmp_path, "kafka-broker", "use") == [f"-XX:SharedArchiveFile={archive}"]
    assert archive_options(tmp_path, "kafka-broker", "off") == []
    assert archive_options(tmp_path, "spark-driver", "use") == []


def test_a_warm_up_writes_under_another_name_until_its_archive_is_checked(tmp_path: Path) -> None:
    (option,) = archive_options(tmp_path / "jars", "spark-driver", "write")
    assert option == f"-XX:ArchiveClassesAtExit={tmp_path / 'jars' / FOLDER / 'spark-driver.jsa.part'}"
    assert (tmp_path / "jars" / FOLDER).is_dir(), "the JVM does not create the folder it dumps into"


def test_settings_name_the_mode_and_refuse_others() -> None:
    assert PulseSettings(_env_file=None).class_archives == "use"  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="class_archives"):
        PulseSettings(_env_file=None, class_archives="sometimes")  # type: ignore[call-arg,arg-type]


def test_a_quick_jvm_stops_at_c1_and_a_full_one_gets_no_option() -> None:
    assert jit_options(quick=True) == ["-XX:TieredStopAtLevel=1"]
    assert jit_options(quick=False) == []


def test_auto_jit_is_quick_for_a_run_that_ends_by_itself_and_full_for_one_until_stopped() -> None:
    settings = PulseSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.jit == "auto" and not settings.quick_jit, "outside a run, a JVM compiles fully"
    assert Runtime(Plan(settings, until=Until.CAUGHT_UP)).settings.quick_jit
    assert Runtime(Plan(settings, until=Until.IDLE)).settings.jit == "quick"
    assert Runtime(Plan(settings)).settings.jit == "full"
    # A choice of the user's stands either way.
    assert Runtime(Plan(settings.override(jit="full"), until=Until.CAUGHT_UP)).settings.jit == "full"
    assert Runtime(Plan(settings.override(jit="quick"))).settings.jit == "quick"
    with pytest.raises(ValueError, match="jit"):
        settings.override(jit="c2")
