"""Building the Slurm job chain (dry run), the stage scripts' command lines, and the local mode."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wsi_pipeline.cli import app
from wsi_pipeline.cluster import (
    RunSpec,
    SlurmError,
    SubmitConfig,
    array_size,
    count_slides,
    find_stages_dir,
    parse_stages,
    plan_jobs,
    run_local,
    submit_jobs,
    wait_for_jobs,
)
from wsi_pipeline.config import config_to_dict, load_config
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
    assert _option(embed, "--gres") == "gpu:a100:2"
    assert _option(train, "--gres") == _option(tile, "--gres") == "none"  # beats the script's #SBATCH --gres
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


def test_weights_may_be_a_file_or_a_name(run_inputs: dict[str, Path], monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(run_inputs["labels"].parent)
    assert _spec(run_inputs, weights="labels.csv").weights == str(run_inputs["labels"].absolute())
    assert _spec(run_inputs, weights="hf-hub:org/model").env()["WSI_WEIGHTS"] == "hf-hub:org/model"


def test_validate_names_the_missing_option(run_inputs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="--labels"):
        RunSpec(out=run_inputs["out"], slides=[str(run_inputs["slides"])], encoder="x").validate()
    with pytest.raises(ConfigError, match="--checkpoint"):
        _spec(run_inputs, stages=("predict",)).validate()
    with pytest.raises(ConfigError, match="no such file"):
        RunSpec(out=run_inputs["out"], slides=["/nonexistent/slides"], stages=("tile",)).validate()


def test_dry_run_cli_prints_a_runnable_script(run_inputs: dict[str, Path]) -> None:
    result = CliRunner().invoke(
        app,
        [
            "submit",
            str(run_inputs["slides"]),
            "--out",
            str(run_inputs["out"]),
            "--encoder",
            "resnet18",
            "--labels",
            str(run_inputs["labels"]),
            "--slides-per-task",
            "1",
            "--max-concurrent",
            "2",
            "--set",
            "embed.gpus=0",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert script.count("--array=0-2%2") == 3  # tile, embed and predict are arrays; train is one job
    assert '"--dependency=afterany:$TILE"' in script and '"--dependency=afterok:$TRAIN"' in script
    assert "export WSI_SHARDS=3" in script and "export WSI_ENCODER=resnet18" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not run_inputs["out"].exists()  # a dry run writes nothing


def test_submit_chains_job_ids_and_records_them(run_inputs: dict[str, Path]) -> None:
    spec = _spec(run_inputs)
    jobs = plan_jobs(spec, SubmitConfig(), 3, STAGES_DIR)
    calls = []

    def fake_sbatch(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append((argv, kwargs["env"]))
        return subprocess.CompletedProcess(argv, 0, stdout=f"{100 + len(calls)};cluster\n", stderr="")

    submitted = submit_jobs(jobs, spec, shards=1, runner=fake_sbatch)
    assert [(job.stage, job.job_id) for job in submitted] == [
        ("tile", "101"),
        ("embed", "102"),
        ("train", "103"),
        ("predict", "104"),
    ]
    assert [_option(argv, "--dependency") for argv, _ in calls] == [
        None,
        "afterany:101",
        "afterany:102",
        "afterok:103",
    ]
    env = calls[0][1]
    assert env["WSI_SLIDES"] == str(run_inputs["slides"].absolute()) and env["WSI_SHARDS"] == "1"
    assert (spec.out / "logs" / "slurm" / "embed").is_dir()  # Slurm does not create log folders
    assert len(list((spec.out / "submissions").glob("*.json"))) == 1


def test_submit_failure_names_the_stage(run_inputs: dict[str, Path]) -> None:
    spec = _spec(run_inputs)
    jobs = plan_jobs(spec, SubmitConfig(), 3, STAGES_DIR)

    def fake_sbatch(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if "--job-name=wsi-embed" in argv:
            return subprocess.CompletedProcess(argv, 1, stdout="", stderr="sbatch: error: invalid partition")
        return subprocess.CompletedProcess(argv, 0, stdout="7\n", stderr="")

    with pytest.raises(SlurmError, match=r"embed stage failed \(sbatch: error: invalid partition\).*tile=7"):
        submit_jobs(jobs, spec, shards=1, runner=fake_sbatch)


def test_wait_for_jobs_polls_until_the_queue_is_empty() -> None:
    answers = iter(["5_0\n5_1\n6\n", "6\n", ""])

    def fake_squeue(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        return subprocess.CompletedProcess(argv, 0, stdout=next(answers), stderr="")

    seen = []
    wait_for_jobs(["5", "6"], poll_s=0, runner=fake_squeue, on_poll=seen.append)
    assert seen == [3, 1, 0]


def test_local_mode_runs_the_same_scripts_in_order(run_inputs: dict[str, Path], monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")  # e.g. inside an allocation: must not shard a local run
    spec = _spec(run_inputs)
    jobs = plan_jobs(spec, SubmitConfig(), 3, STAGES_DIR)
    calls = []

    def fake_bash(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append((Path(argv[1]).stem, kwargs["env"]))
        failed = {"tile": 1, "train": 1}  # a failed slide in tile, then a failed training
        return subprocess.CompletedProcess(argv, failed.get(Path(argv[1]).stem, 0))

    outcomes = run_local(jobs, spec, runner=fake_bash, echo=lambda line: None)
    assert [stage for stage, _ in calls] == ["tile", "embed", "train"]  # predict waits on train with afterok
    assert [(o.stage, o.returncode) for o in outcomes] == [("tile", 1), ("embed", 0), ("train", 1), ("predict", None)]
    env = calls[0][1]
    assert "SLURM_ARRAY_TASK_ID" not in env and "WSI_SHARDS" not in env
    assert env["WSI_OUT"] == str(spec.out)


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


def test_stage_scripts_build_the_cli_call_from_the_environment(run_inputs: dict[str, Path], fake_cli: Path) -> None:
    spec = _spec(run_inputs, config="/dev/null", device="cpu", overwrite=True)
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
        "/dev/null",
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
        "/dev/null",
        "--device",
        "cpu",
    ]
    predict = _script_argv("predict", {**env, "WSI_CHECKPOINT": "/m/best.pt", "SLURM_ARRAY_TASK_ID": "3"}, fake_cli)
    assert predict[1:] == [
        "predict",
        "/m/best.pt",
        str(spec.stores),
        "--out",
        str(spec.predictions),
        "--config",
        "/dev/null",
        "--device",
        "cpu",
        "--overwrite",
        "--shard",
        "3/4",
    ]
    assert "--shard" not in _script_argv("predict", {**env, "WSI_CHECKPOINT": "/m/best.pt"}, fake_cli)


def test_stage_scripts_say_what_is_missing(fake_cli: Path) -> None:
    result = subprocess.run(
        ["bash", str(STAGES_DIR / "embed.sbatch")],
        env={"PATH": f"{fake_cli}{os.pathsep}{os.environ['PATH']}", "WSI_OUT": "/tmp/x"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "WSI_ENCODER" in result.stderr
