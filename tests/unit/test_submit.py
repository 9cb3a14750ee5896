"""`mel submit` without a cluster: the job it builds (entrypoint, config as overrides, runtime_env), its
config checks, and how it follows a job to an exit status (with a test double of JobSubmissionClient)."""

from __future__ import annotations

import argparse
import io
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mel.config import Config, load_config
from mel.config_overrides import config_overrides
from mel.errors import ConfigError
from tests.conftest import REPO


# ----------------------------------------------------------------------------------------------- overrides
@pytest.mark.parametrize("path", ["configs/gpu.yaml", "configs/demo.yaml", "configs/test.yaml", None])
def test_config_overrides_rebuild_the_config(path: str | None) -> None:
    cfg = load_config(REPO / path if path else None)
    items = config_overrides(cfg)
    assert load_config(None, items).model_dump() == cfg.model_dump()
    assert (items == []) == (path is None)


def test_config_overrides_of_awkward_values() -> None:
    cfg = load_config(None, {"index.entity_template": "{name}: {description} — ü", "selection.adapters": {"a": "/x y"},
                             "selection.lora_adapter": "a", "serve.app_name": "null", "nil.threshold": 0.5,
                             "retrieval.mention_template": " {surface}", "submit.python": "python3"})
    items = config_overrides(cfg, exclude=("submit",))
    assert not any(i.startswith("submit.") for i in items)
    back = load_config(None, items)
    assert back.index.entity_template == "{name}: {description} — ü" and back.serve.app_name == "null"
    assert back.selection.adapters == {"a": "/x y"} and back.retrieval.mention_template == " {surface}"
    assert back.model_dump(exclude={"submit"}) == cfg.model_dump(exclude={"submit"})


# ----------------------------------------------------------------------------------------------- config
def test_submit_config_checks_runtime_env() -> None:
    with pytest.raises(ConfigError, match="submit.working_dir"):
        load_config(None, {"submit.runtime_env": {"working_dir": "."}})
    with pytest.raises(ConfigError, match="env_vars must map names to strings"):
        load_config(None, {"submit.runtime_env": {"env_vars": {"N": 1}}})
    with pytest.raises(ConfigError, match="py_modules"):
        load_config(None, {"submit.runtime_env": {"py_modules": "x"}})
    with pytest.raises(ConfigError, match="job_id_prefix"):
        load_config(None, {"submit.job_id_prefix": "bad id"})
    ok = load_config(None, {"submit.runtime_env": {"pip": ["x==1"], "env_vars": {"A": "1"}}})
    assert ok.submit.runtime_env["pip"] == ["x==1"]


# ----------------------------------------------------------------------------------------------- the job
def _parse_entrypoint(entrypoint: str) -> tuple[argparse.Namespace, Config]:
    from mel.entrypoints.cli import build_parser

    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "mel"]
    args = build_parser().parse_args(argv[3:])
    return args, load_config(args.config, args.overrides)


def test_job_entrypoint_carries_the_config_and_joins_the_cluster() -> None:
    from mel.entrypoints.submit import build_job

    cfg = load_config(REPO / "configs" / "demo.yaml", ["ray.address=ray://elsewhere:10001",
                                                        "submit.address=http://127.0.0.1:8265"])
    spec = build_job(cfg, "index", ["--kb", "data/demo/kb", "--out", "/mnt/idx"], log_level="DEBUG")
    args, job_cfg = _parse_entrypoint(spec.entrypoint)
    assert args.command == "index" and args.kb == "data/demo/kb" and args.out == "/mnt/idx"
    assert args.log_level == "DEBUG" and args.config is None  # no config file travels, only overrides
    assert job_cfg.ray.address == "auto"
    assert job_cfg.model_dump(exclude={"ray", "submit"}) == cfg.model_dump(exclude={"ray", "submit"})
    assert spec.submission_id.startswith("mel-index-") and spec.metadata == {"mel_command": "index"}


def test_job_runtime_env(tmp_path: Path) -> None:
    from mel.entrypoints.submit import JOB_ENV_VARS, job_runtime_env, repo_root

    assert repo_root() == REPO
    cfg = load_config(None, {"submit.runtime_env": {"env_vars": {"A": "1"}, "py_modules": ["/m"]}})
    env = job_runtime_env(cfg.submit)
    assert env["working_dir"] == str(REPO) and ".venv" in env["excludes"] and ".git" in env["excludes"]
    assert env["env_vars"] == {"A": "1", **JOB_ENV_VARS} and env["py_modules"] == ["/m"]
    assert env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    assert job_runtime_env(load_config(None, {"submit.working_dir": str(tmp_path)}).submit)["working_dir"] == str(
        tmp_path)
    assert "working_dir" not in job_runtime_env(load_config(None, {"submit.upload_working_dir": False}).submit)
    with pytest.raises(ConfigError, match="is not a directory"):
        job_runtime_env(load_config(None, {"submit.working_dir": str(tmp_path / "nope")}).submit)


def test_argv_from_namespace_passes_on_the_local_arguments() -> None:
    from mel.entrypoints.cli import build_parser
    from mel.entrypoints.submit import argv_from_namespace

    args = build_parser().parse_args(["submit", "eval", "--dataset", "wikimel", "--index", "/i", "--limit", "5",
                                      "--config", "c.yaml", "--set", "a.b=1", "--address", "http://h:1"])
    argv = argv_from_namespace(args.local_parser, args)
    assert argv == ["--dataset", "wikimel", "--index", "/i", "--limit", "5"]
    link = build_parser().parse_args(["submit", "link", "--index", "/i", "--mentions", "m.jsonl", "--out", "/o",
                                      "--local"])
    assert argv_from_namespace(link.local_parser, link) == ["--index", "/i", "--mentions", "m.jsonl", "--out", "/o",
                                                            "--local"]


def test_address_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    from mel.entrypoints.submit import SubmitError, resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SubmitError, match="no cluster address"):
        resolve_address(Config().submit)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")
    assert resolve_address(Config().submit) == "http://127.0.0.1:9"
    assert resolve_address(load_config(None, {"submit.address": "http://h:2"}).submit) == "http://h:2"


# ----------------------------------------------------------------------------------------------- following it
class FakeJobClient:
    """Test double of ray.job_submission.JobSubmissionClient: a job that goes through ``statuses``."""

    def __init__(self, statuses: list[str], logs: list[str] = (), interrupt_at: int | None = None) -> None:
        self.statuses, self.logs, self.interrupt_at = list(statuses), list(logs), interrupt_at
        self.calls = 0
        self.submitted: dict[str, Any] = {}
        self.stopped = False

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted = kwargs
        return kwargs["submission_id"]

    def get_job_status(self, job_id: str) -> str:
        self.calls += 1
        if self.interrupt_at is not None and self.calls >= self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        if self.stopped:
            return "STOPPED"
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def get_job_info(self, job_id: str) -> Any:
        return argparse.Namespace(driver_exit_code={"SUCCEEDED": 0, "FAILED": 2}.get(self.statuses[0]),
                                  message="Job entrypoint command failed")

    def get_job_logs(self, job_id: str) -> str:
        return "".join(self.logs)

    def stop_job(self, job_id: str) -> bool:
        self.stopped = True
        return True

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        for chunk in self.logs:
            yield chunk


def _run(client: FakeJobClient, *sets: str) -> tuple[int, str]:
    from mel.entrypoints.submit import submit

    cfg = load_config(None, ["submit.address=http://fake:1", "submit.poll_interval_s=0.01", *sets])
    out = io.StringIO()
    code = submit(cfg, "index", ["--kb", "kb.jsonl", "--out", "/x"], client_factory=lambda a: client, out=out)
    return code, out.getvalue()


def test_succeeded_job_exits_0_with_its_logs() -> None:
    client = FakeJobClient(["PENDING", "RUNNING", "SUCCEEDED"], logs=["line one\n", "index written to /x\n"])
    code, out = _run(client)
    assert code == 0
    assert "line one" in out and "index written to /x" in out
    assert out.index(": PENDING") < out.index(": RUNNING") < out.index(": SUCCEEDED")
    sent = client.submitted
    assert sent["submission_id"].startswith("mel-index-") and "ray.address=auto" in sent["entrypoint"]
    assert sent["runtime_env"]["working_dir"] == str(REPO) and sent["entrypoint_num_cpus"] == 0


def test_failed_and_stopped_jobs() -> None:
    code, out = _run(FakeJobClient(["RUNNING", "FAILED"], logs=["mel index: error: kb.jsonl: KB file not found\n"]))
    assert code == 1 and "KB file not found" in out and "(exit code 2)" in out
    assert _run(FakeJobClient(["RUNNING", "STOPPED"]))[0] == 130


def test_timeout_stops_the_job() -> None:
    client = FakeJobClient(["RUNNING"])
    code, out = _run(client, "submit.timeout_s=0.05")
    assert code == 124 and client.stopped and "timeout" in out


def test_ctrl_c_stops_the_job() -> None:
    client = FakeJobClient(["RUNNING"], interrupt_at=3)
    code, out = _run(client, "submit.follow_logs=false")
    assert code == 130 and client.stopped and "interrupted" in out


def test_no_wait_returns_after_submitting() -> None:
    client = FakeJobClient(["RUNNING"])
    code, out = _run(client, "submit.wait=false")
    assert code == 0 and client.calls == 0 and "ray job logs -f" in out


def test_cli_submit_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mel.entrypoints import submit
    from mel.entrypoints.cli import main

    client = FakeJobClient(["SUCCEEDED"])
    monkeypatch.setattr(submit, "ray_job_client", lambda address: client)
    code = main(["submit", "index", "--kb", "data/demo/kb", "--out", "runs/x", "--address", "http://h:1",
                 "--set", "pipelines.index.workers=3", "--set", "submit.poll_interval_s=0.01"])
    assert code == 0
    assert "relative" in capsys.readouterr().err  # --out runs/x would land in the job's temporary copy
    args, job_cfg = _parse_entrypoint(client.submitted["entrypoint"])
    assert (args.kb, args.out) == ("data/demo/kb", "runs/x")
    assert job_cfg.pipelines.index.workers == 3 and job_cfg.ray.address == "auto"
