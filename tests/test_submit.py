"""Building the Slurm job chain (dry run), the stage scripts' command lines, and the local mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wsi_pipeline.cli import app
from wsi_pipeline.cluster import (
    STAGES,
    JobSpec,
    RunSpec,
    SlurmClient,
    SlurmError,
    SubmissionRecord,
    SubmitConfig,
    TaskState,
    array_size,
    count_slides,
    find_stages_dir,
    parse_sacct,
    parse_scontrol,
    parse_stages,
    plan_jobs,
    query_states,
    run_local,
    sbatch_header,
    state_from_log,
    status_of_record,
    submit_jobs,
    wait_for_states,
)
from wsi_pipeline.config import config_to_dict, load_config, parse_set_overrides
from wsi_pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STAGES_DIR = ROOT / "stages"


@pytest.fixture
def run_inputs(tmp_path: Path) -> dict[str, Path]:
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("a.svs", "b.ndpi", "c d.tiff", "notes.txt"):
        (slides / name).write_bytes(b"x")
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\na,0\n")
    return {"slides": slides, "labels": labels, "out": tmp_path / "run"}


def _spec(run_inputs: dict[str, Path], **kwargs) -> RunSpec:  # noqa: ANN003
    return RunSpec(
        out=run_inputs["out"],
        slides=[str(run_inputs["slides"])],
        encoder="resnet18",
        labels=str(run_inputs["labels"]),
        **kwargs,
    )


def _option(argv: list[str], name: str) -> str | None:
    found = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{name}=")]
    return found[-1] if found else None


def test_configs_submit_yaml_mirrors_the_defaults() -> None:
    data = yaml.safe_load((ROOT / "configs" / "submit.yaml").read_text())
    assert data["submit"] == config_to_dict(SubmitConfig())


@pytest.mark.parametrize("stage", STAGES)
def test_stage_scripts_carry_the_configured_defaults_and_no_gpu_line(stage: str) -> None:
    """One source of resources: the scripts' #SBATCH lines are SubmitConfig's (= configs/submit.yaml's)."""
    lines = [line for line in (STAGES_DIR / f"{stage}.sbatch").read_text().splitlines() if line.startswith("#SBATCH")]
    assert lines == sbatch_header(stage), f"stages/{stage}.sbatch: its #SBATCH lines must be {sbatch_header(stage)}"
    assert not any("gres" in line or "gpu" in line for line in lines)


@pytest.mark.parametrize(
    ("n_slides", "per_task", "cap", "expected"),
    [(0, 25, 1000, 1), (1, 25, 1000, 1), (25, 25, 1000, 1), (26, 25, 1000, 2), (100_000, 25, 1000, 1000)],
)
def test_array_size(n_slides: int, per_task: int, cap: int, expected: int) -> None:
    assert array_size(n_slides, SubmitConfig(slides_per_task=per_task, max_array_size=cap)) == expected


def test_count_slides(run_inputs: dict[str, Path], tmp_path: Path) -> None:
    assert count_slides([run_inputs["slides"]]) == 3
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n/x/a.svs\n/x/b.svs\n\n")
    assert count_slides([manifest, run_inputs["slides"] / "a.svs"]) == 3


def test_count_slides_on_real_slides(slides_dir: Path) -> None:
    # The two .dcm files are the instances of ONE DICOM slide.
    assert count_slides([slides_dir]) == len([p for p in slides_dir.iterdir() if p.suffix in {".svs", ".tiff"}]) + 1


def test_parse_stages() -> None:
    assert parse_stages("predict,tile") == ("tile", "predict")
    with pytest.raises(ConfigError, match="tile,embed,train,predict"):
        parse_stages("tile,tilt")


def test_chain_dependencies_arrays_and_overrides(run_inputs: dict[str, Path]) -> None:
    config = load_config(
        SubmitConfig,
        "submit",
        None,
        {
            "slides_per_task": 2,
            "max_concurrent": 3,
            "partition": "cpu",
            "embed.partition": "gpu",
            "embed.gpus": 2,
            "embed.gpu_type": "a100",
            "train.gpus": 0,
            "tile.mem": "4G",
            "extra_sbatch_args": ["--mail-type=FAIL"],
        },
    )
    spec = _spec(run_inputs)
    jobs = plan_jobs(spec, config, count_slides(spec.slides), STAGES_DIR)
    assert [job.stage for job in jobs] == ["tile", "embed", "train", "predict"]
    assert [job.tasks for job in jobs] == [2, 2, None, 2]  # 3 slides, 2 per task; train: one job
    assert [(job.after, job.dependency) for job in jobs] == [
        (None, "afterany"),
        ("tile", "afterany"),
        ("embed", "afterany"),
        ("train", "afterok"),  # no checkpoint, nothing to predict
    ]
    tile, embed, train, predict = (job.sbatch_argv("42") for job in jobs)
    assert _option(tile, "--array") == "0-1%3"
    assert _option(tile, "--output") == str(spec.out / "logs" / "slurm" / "tile" / "%A_%a.out")
    assert _option(train, "--output") == str(spec.out / "logs" / "slurm" / "train" / "%j.out")
    assert _option(train, "--array") is None
    assert _option(predict, "--array") == "0-1%3"
    assert _option(predict, "--output") == str(spec.out / "logs" / "slurm" / "predict" / "%A_%a.out")
    assert (_option(tile, "--partition"), _option(embed, "--partition")) == ("cpu", "gpu")
    assert (_option(tile, "--mem"), _option(embed, "--mem")) == ("4G", "32G")
    assert _option(embed, "--gres") == "gpu:a100:2" and _option(predict, "--gres") == "gpu:1"
    assert _option(train, "--gres") is _option(tile, "--gres") is None  # 0 GPUs: nothing asked, nothing to undo
    assert "--mail-type=FAIL" in predict
    assert _option(predict, "--dependency") == "afterok:42"
    assert "--kill-on-invalid-dep=yes" in embed
    assert tile[:2] == ["sbatch", "--parsable"] and tile[-1] == str(STAGES_DIR / "tile.sbatch")


def test_strict_chain_and_partial_runs(run_inputs: dict[str, Path], tmp_path: Path) -> None:
    spec = _spec(run_inputs, stages=("embed", "predict"), checkpoint=str(run_inputs["labels"]))
    jobs = plan_jobs(spec, SubmitConfig(dependency="afterok"), 60, STAGES_DIR)
    assert [(job.stage, job.after, job.dependency, job.tasks) for job in jobs] == [
        ("embed", None, "afterok", 3),
        ("predict", "embed", "afterok", 3),
    ]


def _gpu_options(argv: list[str]) -> list[str]:
    return [arg for arg in argv if arg.startswith(("--gres", "--gpus"))]


def test_cpu_device_or_preset_asks_for_no_gpu_anywhere(run_inputs: dict[str, Path]) -> None:
    gpus = SubmitConfig()  # the defaults give embed, train and predict a GPU each
    with_gpus = plan_jobs(_spec(run_inputs), gpus, 3, STAGES_DIR)
    assert [_gpu_options(job.sbatch_argv("1")) for job in with_gpus] == [[], ["--gres=gpu:1"]] + [["--gres=gpu:1"]] * 2
    cpu = plan_jobs(_spec(run_inputs, device="cpu"), gpus, 3, STAGES_DIR)
    assert all(_gpu_options(job.sbatch_argv("1")) == [] for job in cpu)
    preset = ROOT / "configs" / "presets" / "cpu.yaml"
    from_preset = plan_jobs(_spec(run_inputs), load_config(SubmitConfig, "submit", preset), 3, STAGES_DIR)
    assert all(_gpu_options(job.sbatch_argv("1")) == [] for job in from_preset)
    for section in ("embed", "train", "predict"):  # the jobs get the same file: every stage runs on the CPU
        assert yaml.safe_load(preset.read_text())[section]["device"] == "cpu"


def test_slurm_times_stay_times(run_inputs: dict[str, Path], tmp_path: Path) -> None:
    """YAML 1.1 reads 12:00:00 as 43200 (base 60), which sbatch would take as 43200 minutes: never."""
    config = tmp_path / "c.yaml"
    config.write_text("submit:\n  tile:\n    time: 12:00:00\n")
    loaded = load_config(SubmitConfig, "submit", config, parse_set_overrides(["train.time=1:30:00"]))
    assert (loaded.tile.time, loaded.train.time) == ("12:00:00", "1:30:00")
    jobs = plan_jobs(_spec(run_inputs), loaded, 3, STAGES_DIR)
    assert [_option(job.sbatch_argv(), "--time") for job in jobs] == ["12:00:00", "08:00:00", "1:30:00", "04:00:00"]


def test_gpus_as_gres_or_gpus(run_inputs: dict[str, Path]) -> None:
    config = load_config(
        SubmitConfig, "submit", None, {"gpu_option": "gpus", "train.gpus": 2, "train.gpu_type": "h100"}
    )
    train = next(job for job in plan_jobs(_spec(run_inputs), config, 3, STAGES_DIR) if job.stage == "train")
    assert _gpu_options(train.sbatch_argv()) == ["--gpus=h100:2"]
    with pytest.raises(ConfigError, match="gpu_option"):
        load_config(SubmitConfig, "submit", None, {"gpu_option": "mig"})


def test_chain_predicts_with_the_run_train_writes(run_inputs: dict[str, Path], tmp_path: Path) -> None:
    """Never "the newest file": predict gets the run folder named by the train settings the jobs read."""
    config = tmp_path / "my.yaml"
    config.write_text("train:\n  folds: 3\n  seed: 7\n")
    spec = _spec(run_inputs, config=str(config), model="abmil")
    assert spec.env()["WSI_CHECKPOINT"] == str(spec.runs / "abmil_resnet18_cv3_seed7")
    given = _spec(run_inputs, checkpoint=str(run_inputs["labels"]))
    assert given.env()["WSI_CHECKPOINT"] == str(run_inputs["labels"].absolute())
    assert "WSI_CHECKPOINT" not in _spec(run_inputs, stages=("tile", "embed")).env()


def test_weights_may_be_a_file_or_a_name(run_inputs: dict[str, Path], monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(run_inputs["labels"].parent)
    assert _spec(run_inputs, weights="labels.csv").weights == str(run_inputs["labels"].absolute())
    assert _spec(run_inputs, weights="hf-hub:org/model").env()["WSI_WEIGHTS"] == "hf-hub:org/model"


def test_validate_names_the_missing_option(run_inputs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="--labels"):
        RunSpec(out=run_inputs["out"], slides=[str(run_inputs["slides"])], encoder="x").validate()
    with pytest.raises(ConfigError, match=r"asmil_resnet18_cv5_seed0 is not a finished training run.*--checkpoint"):
        _spec(run_inputs, stages=("predict",)).validate()
    finished = run_inputs["out"] / "runs" / "asmil_resnet18_cv5_seed0"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text("{}")
    _spec(run_inputs, stages=("predict",)).validate()
    with pytest.raises(ConfigError, match="no such file"):
        RunSpec(out=run_inputs["out"], slides=["/nonexistent/slides"], stages=("tile",)).validate()


def _submit_argv(run_inputs: dict[str, Path], *extra: str) -> list[str]:
    return [
        "submit",
        str(run_inputs["slides"]),
        "--out",
        str(run_inputs["out"]),
        "--encoder",
        "resnet18",
        "--labels",
        str(run_inputs["labels"]),
        *extra,
    ]


def test_dry_run_cli_prints_a_runnable_script(run_inputs: dict[str, Path]) -> None:
    argv = _submit_argv(run_inputs, "--slides-per-task", "1", "--max-concurrent", "2", "--set", "embed.gpus=0")
    result = CliRunner().invoke(app, [*argv, "--dry-run"])
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert script.count("--array=0-2%2") == 3  # tile, embed and predict are arrays; train is one job
    assert '"--dependency=afterany:$TILE"' in script and '"--dependency=afterok:$TRAIN"' in script
    assert "export WSI_SHARDS=3" in script and "export WSI_ENCODER=resnet18" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not run_inputs["out"].exists()  # a dry run writes nothing


def test_dry_run_script_finds_the_entry_point_without_an_activated_venv(run_inputs: dict[str, Path]) -> None:
    """The printed script puts this install's bin/ on PATH, so its jobs find `wsi-pipeline`."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "wsi-pipeline").exists():
        pytest.skip("not running from an installed environment")
    script = CliRunner().invoke(app, [*_submit_argv(run_inputs), "--dry-run"]).stdout
    bare = "/usr/bin:/bin"  # no virtual environment on it
    probe = script.split("\nmkdir", 1)[0] + "\ncommand -v wsi-pipeline\n"
    found = subprocess.run(["bash", "-c", probe], env={"PATH": bare}, capture_output=True, text=True)
    assert found.returncode == 0 and found.stdout.strip() == str(bin_dir / "wsi-pipeline")


class FakeSlurm:
    """sbatch/scancel/sacct/scontrol answers of a tiny cluster; records every call."""

    def __init__(self, *, fail_stage: str | None = None, scancel_rc: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.fail_stage, self.scancel_rc, self.next_id = fail_stage, scancel_rc, 100

    def __call__(self, argv, **kwargs):  # noqa: ANN001, ANN003, ANN204
        self.calls.append(list(argv))
        if argv[0] == "sbatch":
            if self.fail_stage and f"--job-name=wsi-{self.fail_stage}" in argv:
                return subprocess.CompletedProcess(
                    argv, 1, "", "sbatch: error: Invalid generic resource (gres) specification\n"
                )
            self.next_id += 1
            return subprocess.CompletedProcess(argv, 0, f"{self.next_id};cluster\n", "")
        if argv[0] == "scancel":
            return subprocess.CompletedProcess(
                argv, self.scancel_rc, "", "" if not self.scancel_rc else "scancel: error: x\n"
            )
        return subprocess.CompletedProcess(argv, 1, "", "not here")


def _record(spec: RunSpec, mode: str = "slurm") -> SubmissionRecord:
    return SubmissionRecord(spec.out, mode, ["wsi-pipeline", "submit"], str(Path.cwd()), list(spec.stages), ["a"], {})


def test_submit_chains_job_ids_and_records_them(run_inputs: dict[str, Path]) -> None:
    spec = _spec(run_inputs)
    jobs = plan_jobs(spec, SubmitConfig(), 3, STAGES_DIR)
    slurm = FakeSlurm()
    record = _record(spec)
    submitted = submit_jobs(jobs, spec, shards=1, record=record, client=SlurmClient(slurm))
    assert [(job.stage, job.job_id) for job in submitted] == [
        ("tile", "101"),
        ("embed", "102"),
        ("train", "103"),
        ("predict", "104"),
    ]
    assert [_option(argv, "--dependency") for argv in slurm.calls] == [
        None,
        "afterany:101",
        "afterany:102",
        "afterok:103",
    ]
    assert (spec.out / "logs" / "slurm" / "embed").is_dir()  # Slurm does not create log folders
    saved = SubmissionRecord.load(record.path)
    assert saved.status == "submitted" and [job.job_id for job in saved.jobs] == ["101", "102", "103", "104"]
    assert saved.jobs[0].log == str(spec.out / "logs" / "slurm" / "tile" / "%A_%a.out")
    assert list((spec.out / "submissions").glob("*.json")) == [record.path]


def test_a_failing_sbatch_cancels_what_was_submitted(run_inputs: dict[str, Path]) -> None:
    spec = _spec(run_inputs)
    jobs = plan_jobs(spec, SubmitConfig(), 3, STAGES_DIR)
    slurm = FakeSlurm(fail_stage="train")
    record = _record(spec)
    with pytest.raises(SlurmError) as err:
        submit_jobs(jobs, spec, shards=1, record=record, client=SlurmClient(slurm))
    message = str(err.value)
    assert "sbatch for the train stage failed (sbatch: error: Invalid generic resource (gres) specification)" in message
    assert "cancelled the jobs this submission had queued (tile 101, embed 102)" in message and "\n" not in message
    assert slurm.calls[-1] == ["scancel", "101", "102"]
    saved = SubmissionRecord.load(record.path)
    assert saved.status == "failed" and "cancelled" in saved.error and len(saved.jobs) == 2

    first = FakeSlurm(fail_stage="tile")
    with pytest.raises(SlurmError, match="nothing was submitted"):
        submit_jobs(jobs, spec, shards=1, record=_record(spec), client=SlurmClient(first))
    assert not any(call[0] == "scancel" for call in first.calls)
    stuck = FakeSlurm(fail_stage="predict", scancel_rc=1)
    with pytest.raises(SlurmError, match=r"could not cancel .* cancel them with `scancel 101 102 103`"):
        submit_jobs(jobs, spec, shards=1, record=_record(spec), client=SlurmClient(stuck))


# --------------------------------------------------------------------------------------------- job states
SACCT = """\
7_0|COMPLETED|0:0|None
7_1|FAILED|1:0|NonZeroExitCode
8|TIMEOUT|0:15|TimeLimit
9_[0-2%2]|CANCELLED by 0|0:0|DependencyNeverSatisfied
10|OUT_OF_MEMORY|0:125|OutOfMemory
"""
SCONTROL = (
    "JobId=21 ArrayJobId=20 ArrayTaskId=0 JobName=wsi-tile JobState=COMPLETED Reason=None ExitCode=0:0 "
    "StdOut=/r/logs/20_0.out\n"
    "JobId=20 ArrayJobId=20 ArrayTaskId=1-3%2 JobName=wsi-tile JobState=PENDING Reason=JobArrayTaskLimit "
    "Dependency=(null) ExitCode=0:0\n"
)


def test_sacct_and_scontrol_lines_become_task_states() -> None:
    assert parse_sacct(SACCT) == {
        "7_0": ("COMPLETED", ""),
        "7_1": ("FAILED", "exit 1"),
        "8": ("TIMEOUT", "TimeLimit"),
        "9_0": ("CANCELLED", "DependencyNeverSatisfied"),
        "9_1": ("CANCELLED", "DependencyNeverSatisfied"),
        "9_2": ("CANCELLED", "DependencyNeverSatisfied"),
        "10": ("OUT_OF_MEMORY", "OutOfMemory"),
    }
    assert parse_scontrol(SCONTROL) == {
        "20_0": ("COMPLETED", ""),
        "20_1": ("PENDING", "JobArrayTaskLimit"),
        "20_2": ("PENDING", "JobArrayTaskLimit"),
        "20_3": ("PENDING", "JobArrayTaskLimit"),
    }


def test_states_from_slurm_then_memory_then_the_log(tmp_path: Path) -> None:
    """No accounting here: scontrol; a job scontrol forgot: the remembered state, else its log's last words."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "31.out").write_text(
        "start\nslurmstepd: error: *** JOB 31 ON n1 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***\n"
    )
    (logs / "32_0.out").write_text("[wsi-pipeline] 2026-01-01T00:00:00Z exit 0\n")
    (logs / "32_1.out").write_text("...\n[wsi-pipeline] 2026-01-01T00:00:00Z exit 1\n")
    calls = []

    def runner(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(argv[0])
        if argv[0] == "sacct":
            return subprocess.CompletedProcess(argv, 1, "", "Slurm accounting storage is disabled\n")
        if argv[-1] == "20":
            return subprocess.CompletedProcess(argv, 0, SCONTROL, "")
        return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Invalid job id specified\n")

    jobs = [
        JobSpec("tile", "20", 4, str(logs / "%A_%a.out")),
        JobSpec("train", "31", None, str(logs / "%j.out")),
        JobSpec("predict", "32", 3, str(logs / "%A_%a.out")),
        JobSpec("embed", "33", None, str(logs / "%j.out")),
    ]
    remembered = {"33": TaskState("embed", "33", "FAILED", "exit 2", logs / "33.out", "scontrol")}
    client = SlurmClient(runner)
    states = {s.job_id: s for s in query_states(jobs, remembered=remembered, client=client)}
    assert {k: (s.state, s.reason, s.source) for k, s in states.items()} == {
        "20_0": ("COMPLETED", "", "scontrol"),
        "20_1": ("PENDING", "JobArrayTaskLimit", "scontrol"),
        "20_2": ("PENDING", "JobArrayTaskLimit", "scontrol"),
        "20_3": ("PENDING", "JobArrayTaskLimit", "scontrol"),
        "31": ("TIMEOUT", "TimeLimit", "log"),
        "32_0": ("COMPLETED", "", "log"),
        "32_1": ("FAILED", "exit 1", "log"),
        "32_2": ("UNKNOWN", "Slurm no longer knows it and it never wrote a log", ""),
        "33": ("FAILED", "exit 2", "scontrol"),
    }
    assert states["31"].log == logs / "31.out" and states["20_1"].active and not states["32_2"].ok
    query_states(jobs, client=client)
    assert calls.count("sacct") == 1  # accounting is off: asked once, then scontrol only
    assert state_from_log(tmp_path / "none.out") is None


def test_states_come_from_sacct_where_accounting_exists() -> None:
    calls = []

    def runner(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(argv)
        if argv[0] == "sacct":
            return subprocess.CompletedProcess(argv, 0, SACCT, "")
        return subprocess.CompletedProcess(argv, 1, "", "unexpected")

    jobs = [
        JobSpec("tile", "7", 2),
        JobSpec("train", "8", None),
        JobSpec("predict", "9", 3),
        JobSpec("embed", "10", None),
    ]
    states = query_states(jobs, client=SlurmClient(runner))
    assert [(s.job_id, s.describe(), s.source) for s in states] == [
        ("7_0", "COMPLETED", "sacct"),
        ("7_1", "FAILED (exit 1)", "sacct"),
        ("8", "TIMEOUT (TimeLimit)", "sacct"),
        ("9_0", "CANCELLED (DependencyNeverSatisfied)", "sacct"),
        ("9_1", "CANCELLED (DependencyNeverSatisfied)", "sacct"),
        ("9_2", "CANCELLED (DependencyNeverSatisfied)", "sacct"),
        ("10", "OUT_OF_MEMORY (OutOfMemory)", "sacct"),
    ]
    assert [call[0] for call in calls] == ["sacct"]  # one call for every job; scontrol not needed
    assert calls[0][-2:] == ["-j", "7,8,9,10"]


def test_wait_polls_until_every_task_has_ended() -> None:
    answers = iter(
        [
            "JobId=5 JobState=RUNNING Reason=None ExitCode=0:0\n",
            "JobId=5 JobState=RUNNING Reason=None ExitCode=0:0\n",
            "JobId=5 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0\n",
        ]
    )

    def runner(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if argv[0] == "sacct":
            return subprocess.CompletedProcess(argv, 1, "", "disabled")
        return subprocess.CompletedProcess(argv, 0, next(answers), "")

    seen = []
    final = wait_for_states(
        [JobSpec("train", "5", None)], poll_s=0, client=SlurmClient(runner), on_poll=lambda s: seen.append(s[0].state)
    )
    assert seen == ["RUNNING", "RUNNING", "FAILED"] and final[0].describe() == "FAILED (exit 3)"


def test_local_mode_runs_the_same_scripts_in_order(run_inputs: dict[str, Path], monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")  # e.g. inside an allocation: must not shard a local run
    spec = _spec(run_inputs)
    jobs = plan_jobs(spec, SubmitConfig(), 3, STAGES_DIR)
    calls = []
    record = _record(spec, "local")

    def fake_bash(argv, env, log):  # noqa: ANN001, ANN202
        stage = Path(argv[1]).stem
        saved = SubmissionRecord.load(record.path)  # the record says which stage is running, while it runs
        assert [job.state for job in saved.jobs if job.stage == stage] == ["RUNNING"]
        calls.append((stage, env, log))
        return {"tile": 1, "train": 1}.get(stage, 0)  # a failed slide in tile, then a failed training

    states = run_local(jobs, spec, record, runner=fake_bash, echo=lambda line: None)
    assert [stage for stage, _, _ in calls] == ["tile", "embed", "train"]  # predict waits on train with afterok
    assert [(s.stage, s.describe()) for s in states] == [
        ("tile", "FAILED (exit 1)"),
        ("embed", "COMPLETED"),
        ("train", "FAILED (exit 1)"),
        ("predict", "NOT_RUN (train did not complete)"),
    ]
    env = calls[0][1]
    assert "SLURM_ARRAY_TASK_ID" not in env and "WSI_SHARDS" not in env and env["WSI_OUT"] == str(spec.out)
    assert calls[1][2] == spec.out / "logs" / "local" / "embed" / f"{record.id}.out"
    assert SubmissionRecord.load(record.path).status == "finished"


# --------------------------------------------------------------------------------------------- status
def _manifest(
    folder: Path, name: str, rows: list[tuple[str, str, str]], when: str = "2099-01-01T00:00:00+00:00"
) -> None:
    (folder / "manifests").mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,path,status,n_tiles,seconds,error,host,finished_at"]
    lines += [f"{sid},/s/{sid}.svs,{status},,,{error},h,{when}" for sid, status, error in rows]
    (folder / "manifests" / f"{name}.csv").write_text("\n".join(lines) + "\n")


def test_status_counts_slides_and_says_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    record = SubmissionRecord(
        out,
        "slurm",
        ["wsi-pipeline", "submit", "slides/", "--out", str(out)],
        str(tmp_path),
        list(STAGES),
        ["a", "b", "c", "d"],
        {"WSI_OUT": str(out), "WSI_ENCODER": "tiny_test", "WSI_CHECKPOINT": str(out / "runs" / "r")},
        submit_config={"train": {"time": "01:30:00", "mem": "8G"}},
    )
    _manifest(
        out / "stores", "tile", [("a", "ok", ""), ("b", "ok", ""), ("c", "ok", ""), ("d", "failed", "d.svs: broken")]
    )
    _manifest(out / "stores", "embed-tiny_test", [("a", "ok", ""), ("b", "skipped", "already done")])
    _manifest(out / "stores", "tile.shard-0-of-9", [("c", "failed", "old attempt")], when="2000-01-01T00:00:00+00:00")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "12.out").write_text("training...\n")
    states = [
        TaskState("tile", "10_0", "COMPLETED"),
        TaskState("tile", "10_1", "FAILED", "exit 1", logs / "10_1.out"),
        TaskState("embed", "11_0", "COMPLETED"),
        TaskState("embed", "11_1", "RUNNING"),
        TaskState("train", "12", "TIMEOUT", "TimeLimit", logs / "12.out"),
        TaskState("predict", "13_0", "CANCELLED", "DependencyNeverSatisfied", logs / "13_0.out"),
        TaskState("predict", "13_1", "CANCELLED", "DependencyNeverSatisfied", logs / "13_1.out"),
    ]
    status = status_of_record(record, states)
    by_stage = {s.stage: s for s in status.stages}
    assert (by_stage["tile"].ok, len(by_stage["tile"].failed), by_stage["tile"].pending) == (3, 1, 0)
    assert (by_stage["embed"].ok, by_stage["embed"].pending) == (2, 1)  # d failed tiling: not expected here
    assert by_stage["predict"].pending == 3 and status.exit_code == 1 and status.running
    assert by_stage["embed"].slides_summary() == "2 ok, 1 pending"  # its last task still runs
    assert by_stage["predict"].slides_summary() == "0 ok, 3 not done"  # its jobs ended: nothing more will come
    report = status.report()
    lines = report.splitlines()
    assert any(
        line.split()[:3] == ["train", "12", "TIMEOUT"] and line.endswith(f"log {logs / '12.out'}") for line in lines
    )
    assert any(line.split()[:4] == ["predict", "13_[0-1]", "CANCELLED", "(DependencyNeverSatisfied)"] for line in lines)
    assert any(line.split()[:3] == ["tile", "d", "d.svs:"] for line in lines)
    assert "still running" in report
    # Once nothing runs: the resume command, with the time limit that ran out doubled.
    states[3] = TaskState("embed", "11_1", "COMPLETED")
    done = status_of_record(record, states)
    assert not done.running and done.exit_code == 1
    resume = done.report().splitlines()[-1].strip()
    assert resume.endswith(f"wsi-pipeline submit slides/ --out {out} --set train.time=03:00:00")
    assert resume.startswith(f"cd {tmp_path} && ")  # the record's working directory: relative paths still hold


def test_status_of_an_embed_stage_never_imports_torch(tmp_path: Path) -> None:
    # `status` finds the embed manifest by the encoder's name; that must not load torch (2 s of CPU per call).
    code = f"""
import sys
from pathlib import Path
from wsi_pipeline.cluster import SubmissionRecord, status_of_record
out = Path({str(tmp_path / "run")!r})
record = SubmissionRecord(out, "slurm", ["wsi-pipeline", "submit"], ".", ["tile", "embed"], ["a"],
                          {{"WSI_OUT": str(out), "WSI_ENCODER": "hf-hub:org/name"}})
status = status_of_record(record, [])
print([s.stage for s in status.stages], sorted(m for m in ("torch", "timm") if m in sys.modules))
"""
    _manifest(tmp_path / "run" / "stores", "embed-hf-org--name", [("a", "ok", "")])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['tile', 'embed'] []"


def test_status_cli_without_a_record_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "wsi_pipeline", "status", str(tmp_path / "run")], capture_output=True, text=True
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no submission record" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------- the scripts
@pytest.fixture
def fake_cli(tmp_path: Path) -> Path:
    """A `wsi-pipeline` on PATH that prints its arguments one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "wsi-pipeline"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return bin_dir


def _script_argv(stage: str, env: dict[str, str], bin_dir: Path, *extra: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WSI_", "SLURM_"))}
    clean["PATH"] = f"{bin_dir}{os.pathsep}{clean['PATH']}"
    result = subprocess.run(
        ["bash", str(find_stages_dir() / f"{stage}.sbatch"), *extra],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if not line.startswith("[wsi-pipeline]")]


def test_stage_scripts_build_the_cli_call_from_the_environment(
    run_inputs: dict[str, Path], fake_cli: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    spec = _spec(run_inputs, config=str(config), device="cpu", overwrite=True)
    spec.slides.append("/data/with space.svs")
    env = spec.env(shards=4)
    tile = _script_argv("tile", {**env, "SLURM_ARRAY_TASK_ID": "2"}, fake_cli, "--slide-mpp", "0.5")
    assert tile == [
        "-v",
        "tile",
        str(run_inputs["slides"].absolute()),
        "/data/with space.svs",
        "--out",
        str(spec.stores),
        "--config",
        str(config),
        "--overwrite",
        "--shard",
        "2/4",
        "--slide-mpp",
        "0.5",
    ]
    embed = _script_argv("embed", env, fake_cli)  # no array task: every store
    assert embed[:4] == ["-v", "embed", str(spec.stores), "--encoder"] and "--shard" not in embed
    assert embed[embed.index("--device") : embed.index("--device") + 2] == ["--device", "cpu"]
    train = _script_argv("train", env, fake_cli)
    assert train[1:] == [
        "train",
        str(spec.stores),
        "--labels",
        str(run_inputs["labels"].absolute()),
        "--encoder",
        "resnet18",
        "--out",
        str(spec.runs),
        "--config",
        str(config),
        "--device",
        "cpu",
        "--overwrite",  # `submit --overwrite` retrains the run folder too: its folds came from the old stores
    ]
    predict = _script_argv("predict", {**env, "WSI_CHECKPOINT": "/m/best.pt", "SLURM_ARRAY_TASK_ID": "3"}, fake_cli)
    assert predict[1:] == [
        "predict",
        "/m/best.pt",
        str(spec.stores),
        "--out",
        str(spec.predictions),
        "--config",
        str(config),
        "--device",
        "cpu",
        "--overwrite",
        "--shard",
        "3/4",
    ]
    assert "--shard" not in _script_argv("predict", {**env, "WSI_CHECKPOINT": "/m/best.pt"}, fake_cli)
    # Without --checkpoint the chain predicts with the whole run folder its train stage writes.
    assert _script_argv("predict", env, fake_cli)[2] == str(spec.runs / "asmil_resnet18_cv5_seed0")


def test_stage_scripts_end_their_log_with_the_exit_code(fake_cli: Path, tmp_path: Path) -> None:
    """The last log line is what `status` reads once Slurm has forgotten the job."""
    failing = fake_cli / "wsi-pipeline"
    failing.write_text('#!/usr/bin/env bash\necho "columns=$COLUMNS"\nexit 3\n')
    env = {"PATH": f"{fake_cli}{os.pathsep}{os.environ['PATH']}", "WSI_OUT": str(tmp_path), "WSI_ENCODER": "x"}
    result = subprocess.run(["bash", str(STAGES_DIR / "embed.sbatch")], env=env, capture_output=True, text=True)
    log = tmp_path / "embed.out"
    log.write_text(result.stdout)
    assert result.returncode == 3 and state_from_log(log) == ("FAILED", "exit 3")
    assert "columns=400" in result.stdout  # rich lays tables out wide in job logs instead of wrapping at 80


def test_stage_scripts_say_what_is_missing(fake_cli: Path) -> None:
    result = subprocess.run(
        ["bash", str(STAGES_DIR / "embed.sbatch")],
        env={"PATH": f"{fake_cli}{os.pathsep}{os.environ['PATH']}", "WSI_OUT": "/tmp/x"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "WSI_ENCODER" in result.stderr


def test_local_submit_through_the_entry_point_reports_and_records(run_inputs: dict[str, Path], tmp_path: Path) -> None:
    """`submit --local` as a user runs it (stage scripts replaced by quick ones): exit 1 naming the stage that failed
    and its log, a record and one log per stage, and `status` saying the same afterwards."""
    stages = tmp_path / "stages"
    stages.mkdir()
    for stage in STAGES:
        code = 3 if stage == "embed" else 0
        (stages / f"{stage}.sbatch").write_text(f'#!/usr/bin/env bash\necho "{stage} on $WSI_OUT"\nexit {code}\n')
    entry = Path(sys.executable).parent / "wsi-pipeline"
    cli = [str(entry)] if entry.exists() else [sys.executable, "-m", "wsi_pipeline"]
    argv = [*cli, *_submit_argv(run_inputs, "--stages", "tile,embed,train", "--stages-dir", str(stages), "--local")]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    out = run_inputs["out"]
    (record_path,) = (out / "submissions").glob("*-local-*.json")
    record = SubmissionRecord.load(record_path)
    assert [(job.stage, job.state, job.reason) for job in record.jobs] == [
        ("tile", "COMPLETED", ""),
        ("embed", "FAILED", "exit 3"),
        ("train", "COMPLETED", ""),  # afterany: train runs on what embed finished
    ]
    logs = [Path(job.log) for job in record.jobs]
    assert [log.read_text() for log in logs] == [f"{stage} on {out}\n" for stage in ("tile", "embed", "train")]
    assert logs[1] == out / "logs" / "local" / "embed" / f"{record.id}.out"
    assert f"embed  local  FAILED (exit 3)  log {logs[1]}" in result.stdout
    assert "embed on" in result.stderr  # the stage's output also reached the terminal
    status = subprocess.run([*cli, "status", str(out)], capture_output=True, text=True)
    assert status.returncode == 1 and status.stdout == result.stdout
