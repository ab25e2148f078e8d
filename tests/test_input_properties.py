"""Property tests over the users' CSV and YAML inputs (issue 20): encodings, a byte-order mark, CRLF, quoting,
duplicates, unicode, empty files. Each input gives either a correct result, with no row silently dropped, or one
``ConfigError`` line naming the file, never another exception (which the CLI would show as a traceback). A few
examples run through the installed CLI too. Examples are few and deadlines off: the suite must stay fast."""

from __future__ import annotations

import csv
import io
import string
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import CMU_SMALL  # noqa: E402
from tests.test_faults import cli, no_traceback  # noqa: E402
from wsi_pipeline.config import load_config  # noqa: E402
from wsi_pipeline.discovery import clean_slide_id, discover_slides  # noqa: E402
from wsi_pipeline.errors import ConfigError  # noqa: E402
from wsi_pipeline.tiling import TileConfig  # noqa: E402
from wsi_pipeline.training import read_labels  # noqa: E402

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Names as users give them: letters of several scripts, digits, spaces and punctuation inside, no path separators,
# no control characters, no leading/trailing blanks (CSV readers strip those, as spreadsheets do).
_CHARS = st.characters(
    categories=["L", "N", "Pd", "Pc", "Zs"], include_characters="().,'é中ß", exclude_characters="/\\\x00"
)
NAMES = st.text(_CHARS, min_size=1, max_size=12).map(str.strip).filter(lambda s: s and s not in (".", ".."))


def encode(text: str, encoding: str, newline: str) -> bytes:
    return text.replace("\n", newline).encode(encoding)


def write_csv(rows: list[list[str]], quoting: int) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, quoting=quoting, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def one_line_naming(err: ConfigError, path: Path, *others: Path) -> None:
    """One line naming ``path`` (or one of ``others``: the slide file a manifest row names)."""
    message = str(err)
    assert "\n" not in message, message
    assert any(str(p) in message for p in (path, *others)), message


ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig"])
NEWLINES = st.sampled_from(["\n", "\r\n"])
QUOTING = st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])


# --------------------------------------------------------------------------------------------- slide manifests
@FEW
@given(
    names=st.lists(NAMES, min_size=1, max_size=5),
    ids=st.lists(st.one_of(st.none(), NAMES), min_size=5, max_size=5),
    repeat=st.booleans(),
    encoding=ENCODINGS,
    newline=NEWLINES,
    quoting=QUOTING,
)
def test_slide_manifests_give_every_row_or_one_line(
    names: list[str], ids: list[str | None], repeat: bool, encoding: str, newline: str, quoting: int
) -> None:
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = []
        for i, name in enumerate(names):
            path = folder / f"{name}.svs"
            path.touch()
            rows.append([str(path), ids[i] or ""])
        if repeat:
            rows.append(rows[0])  # the same row twice: one slide
        manifest = folder / "manifest.csv"
        manifest.write_bytes(encode(write_csv([["path", "slide_id"], *rows], quoting), encoding, newline))
        try:
            entries = discover_slides([manifest])
        except ConfigError as err:
            one_line_naming(err, manifest, *(Path(path) for path, _ in rows))
            return
        # Every distinct file is there (no row silently dropped), ids are unique and keep the given ones.
        files = {Path(path).resolve() for path, _ in rows}
        assert {entry.path.resolve() for entry in entries} == files
        assert len({entry.slide_id for entry in entries}) == len(entries)
        for path, given_id in rows:
            entry = next(e for e in entries if e.path.resolve() == Path(path).resolve())
            if given_id:  # the manifest's id wins (cleaned the one documented way)
                assert entry.slide_id == clean_slide_id(given_id)


# --------------------------------------------------------------------------------------------- labels
LABEL_IDS = st.text(st.sampled_from("ab中é_-1"), min_size=0, max_size=3)
LABELS = st.sampled_from(["", "x", "y", "tumour", "négatif", " x "])


@FEW
@given(
    rows=st.lists(st.tuples(LABEL_IDS, LABELS), min_size=0, max_size=8),
    encoding=ENCODINGS,
    newline=NEWLINES,
    quoting=QUOTING,
)
def test_labels_give_every_labelled_row_or_one_line(
    rows: list[tuple[str, str]], encoding: str, newline: str, quoting: int
) -> None:
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_bytes(encode(write_csv([["slide_id", "label"], *map(list, rows)], quoting), encoding, newline))
        try:
            labels = read_labels(path)
        except ConfigError as err:
            one_line_naming(err, path)
            return
        wanted = {sid.strip(): label.strip() for sid, label in rows if sid.strip() and label.strip()}
        got = {sid: labels.classes[y] for sid, y in zip(labels.slide_ids, labels.y, strict=True)}
        assert got == wanted


@FEW
@given(data=st.binary(max_size=200), bom=st.booleans())
def test_any_bytes_as_a_labels_csv_are_labels_or_one_line(data: bytes, bom: bool) -> None:
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"slide_id,label\n" + data)
        try:
            read_labels(path)
        except ConfigError as err:
            one_line_naming(err, path)


# --------------------------------------------------------------------------------------------- YAML configs
TILE_KEYS = ["target_mpp", "tile_size", "stride", "min_tissue", "max_tiles", "seed", "edge"]
KEYS = st.sampled_from([*TILE_KEYS, "tile_sise", "tiles", "mask", "qc", "threshold", "ünïcode"])
SCALARS = st.one_of(
    st.integers(-5, 600), st.floats(0.01, 4, allow_nan=False), st.booleans(), st.none(), st.text(max_size=6)
)
TREES = st.recursive(SCALARS, lambda inner: st.dictionaries(KEYS, inner, max_size=3), max_leaves=6)


@FEW
@given(
    tree=st.dictionaries(st.sampled_from(["tile", "tiles", "embed", "tile_size", "x"]), TREES, max_size=3),
    bom=st.booleans(),
    newline=NEWLINES,
)
def test_yaml_configs_load_or_say_what_is_wrong_in_one_line(tree: dict, bom: bool, newline: str) -> None:
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        text = yaml.safe_dump(tree, allow_unicode=True)
        path.write_bytes(encode(text, "utf-8-sig" if bom else "utf-8", newline))
        try:
            config = load_config(TileConfig, "tile", path)
        except ConfigError as err:
            one_line_naming(err, path)
            return
        # Loaded: every key given under tile: is in the config (nothing silently ignored).
        for key, value in (tree.get("tile") or {}).items():
            assert key in TILE_KEYS
            assert getattr(config, key) == value or isinstance(value, (int, float))


@FEW
@given(text=st.text(st.sampled_from(string.printable + "é中\t"), max_size=80))
def test_any_text_as_a_yaml_config_loads_or_is_one_line(text: str) -> None:
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(TileConfig, "tile", path)
        except ConfigError as err:
            one_line_naming(err, path)


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(text=st.sampled_from(["tile: [", "tile:\n  tile_size: x\n", "\ufefftile:\n  seed: 1\n  sead: 2\n", ": :"]))
def test_yaml_mistakes_through_the_cli_are_one_line(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    result = cli("tile", CMU_SMALL, "-o", tmp_path / "out", "-c", path)
    no_traceback(result)
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")][0].count(str(path)) == 1
