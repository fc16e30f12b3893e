"""Read a text-classification task from JSONL, CSV/TSV, Parquet, ``datasets.save_to_disk`` or a folder of
train/test files, detect its columns and make a held-out split when none is given."""

from __future__ import annotations

import json
import numbers
from pathlib import Path

import numpy as np

from .._errors import TaskError
from ._data import resolve as resolve_data
from ._task import Split, Task

TEXT_COLUMNS = (
    "text",
    "sentence",
    "sentence1",
    "question",
    "question1",
    "premise",
    "content",
    "review",
    "tweet",
    "document",
)
PAIR_COLUMNS = ("text_pair", "sentence2", "question2", "hypothesis", "pair", "text_b")
LABEL_COLUMNS = ("label", "labels", "class", "target", "category", "intent", "y")
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
TRAIN_STEMS = ("train",)
TEST_STEMS = ("test", "validation", "valid", "dev", "val")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())


def load_task(
    path: str | Path,
    *,
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
    domain: str | None = None,
    data_rev: str | None = None,
) -> Task:
    """Load a task from ``path`` (see module docstring); ``example`` or ``example:NAME`` names a bundled one.

    Without a held-out file, a seeded stratified ``test_fraction`` of the training rows is held out. The task's
    ``meta["data"]`` records where its data came from (DVC's md5; its DVC repository, path and revision when it has
    one), and ``data_rev`` reads the data as it was at that git revision of its DVC repository.
    """
    given = _resolve(path)
    source = resolve_data(given, data_rev)
    path = source.local
    columns = dict(text_column=text_column, pair_column=pair_column, label_column=label_column)
    where = str(given) + (f" at {data_rev}" if data_rev else "")
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        train_rows, test_rows = _read_saved_dataset(path)
        train_where, test_where = where, where + " (held-out split)"
    elif path.is_dir():
        train_file, test_file = _find_split_files(path)
        train_rows = _read_rows(train_file)
        test_rows = _read_rows(test_file) if test_file else None
        train_where, test_where = str(train_file), str(test_file)
    else:
        train_rows, test_rows = _read_rows(path), None
        train_where, test_where = where, None

    name = name or (given.stem if given.is_file() else given.name)
    task = task_from_rows(
        train_rows,
        test_rows,
        name=name,
        where=where,
        train_where=train_where,
        test_where=test_where,
        test_fraction=test_fraction,
        seed=seed,
        domain=domain,
        source=str(given),
        **columns,
    )
    task.meta["data"] = source.provenance()
    return task


def task_from_rows(
    train_rows: list[dict],
    test_rows: list[dict] | None = None,
    *,
    name: str,
    where: str | None = None,
    train_where: str | None = None,
    test_where: str | None = None,
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    domain: str | None = None,
    source: str | None = None,
) -> Task:
    """A task from rows already read (JSON objects with a text, an optional pair and a label column, detected as
    ``load_task`` detects them); errors name ``where`` (default: the task's name)."""
    where = where or name
    train_where, test_where = train_where or where, test_where or f"{where} (held-out rows)"
    columns = dict(text_column=text_column, pair_column=pair_column, label_column=label_column)
    if not train_rows:
        raise TaskError(f"{train_where}: no training rows")
    keys = _detect_columns(train_rows, train_where, **columns)
    train_text, train_pair, train_label, first = _columns(train_rows, keys, train_where)
    label_names = sorted(set(train_label), key=_label_sort_key)
    if len(label_names) < 2:
        raise TaskError(
            f"{where}: the training data has a single class ({label_names[0]!r}); classification needs at least two"
        )
    index = {label: i for i, label in enumerate(label_names)}
    train = Split(train_text, [index[label] for label in train_label], train_pair)

    if test_rows is not None:
        test_keys = _detect_columns(test_rows, test_where, **columns)
        test_text, test_pair, test_label, _ = _columns(test_rows, test_keys, test_where, first)
        unseen = sorted(set(test_label) - set(index), key=_label_sort_key)
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:5]) + (" …" if len(unseen) > 5 else "")
            raise TaskError(
                f"{where}: the held-out split has labels never seen in training: {shown}; add training "
                "examples for them or drop those rows"
            )
        if (test_pair is None) != (train_pair is None):
            raise TaskError(
                f"{where}: train and held-out splits disagree on sentence pairs (one has a pair column, the other not)"
            )
        test = Split(test_text, [index[label] for label in test_label], test_pair)
        test_source = "file"
    else:
        train, test = _holdout(train, test_fraction, seed, where)
        test_source = "split"

    return Task(
        name=name,
        label_names=[str(label) for label in label_names],
        train=train,
        test=test,
        source=source or name,
        test_source=test_source,
        domain=domain,
    )


def _resolve(path: str | Path) -> Path:
    text = str(path)
    if text == "example" or text.startswith("example:"):
        chosen = text.partition(":")[2] or "sst2-mini"
        if chosen not in example_names():
            raise TaskError(f"no bundled example named {chosen!r}; choose one of: {', '.join(example_names())}")
        return EXAMPLES / chosen
    p = Path(text).expanduser()
    if not p.exists():
        raise TaskError(
            f"no such file or directory: {text} (give a JSONL/CSV/TSV/Parquet file, a folder with train/test "
            "files, or 'example')"
        )
    return p


def _find_split_files(folder: Path) -> tuple[Path, Path | None]:
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in SUFFIXES]
    by_stem = {f.stem.lower(): f for f in files}
    train = next((by_stem[s] for s in TRAIN_STEMS if s in by_stem), None)
    if train is None:
        if len(files) == 1 and files[0].stem.lower() not in TEST_STEMS:
            return files[0], None
        held = [f.name for f in files if f.stem.lower() in TEST_STEMS]
        found = f" (found held-out {', '.join(held)})" if held else ""
        raise TaskError(
            f"{folder}: no train file found{found}; expected train.jsonl, train.csv, train.tsv or train.parquet"
        )
    test = next((by_stem[s] for s in TEST_STEMS if s in by_stem), None)
    return train, test


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        import pandas as pd

        try:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        except Exception as exc:  # pandas raises several parser error types
            raise TaskError(
                f"{path}: cannot parse as {suffix[1:].upper()} ({_first_line(exc)}); check the delimiter and quoting"
            ) from None
        rows = frame.to_dict("records")
    elif suffix == ".parquet":
        import pandas as pd

        try:
            rows = pd.read_parquet(path).to_dict("records")
        except Exception as exc:
            raise TaskError(f"{path}: cannot read as Parquet ({_first_line(exc)})") from None
    else:
        raise TaskError(f"{path}: unsupported file type {suffix or '(none)'}; use .jsonl, .csv, .tsv or .parquet")
    if not rows:
        raise TaskError(f"{path}: the file has no rows")
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    # Parsed line by line (not with pandas/datasets) so that an error can name the offending line.
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a byte-order mark (Windows editors) is dropped
    except UnicodeDecodeError as exc:  # strict, as the CSV path: replacing bytes would silently change the texts
        before = exc.object[: exc.start]
        lineno, column = before.count(b"\n") + 1, exc.start - before.rfind(b"\n")
        bad = f"byte 0x{exc.object[exc.start]:02x} at byte {column} of the line"
        raise TaskError(f"{path} line {lineno}: not valid UTF-8 ({bad}); re-save the file as UTF-8") from None
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
        if not all(isinstance(r, dict) for r in rows):
            raise TaskError(f"{path}: expected a JSON array of objects")
        return rows
    rows = []
    # split("\n"), not splitlines(): JSONL ends records at \n only, and real text contains U+0085/U+2028,
    # which splitlines() would also break on.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(
                f"{path} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line"
            ) from None
        if not isinstance(row, dict):
            raise TaskError(f"{path} line {lineno}: expected a JSON object per line, got {type(row).__name__}")
        row["__line__"] = lineno
        rows.append(row)
    return rows


def _read_saved_dataset(path: Path) -> tuple[list[dict], list[dict] | None]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise TaskError(f"{path}: cannot load as a datasets.save_to_disk directory ({_first_line(exc)})") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded.to_list(), None
    splits = {name.lower(): loaded[name] for name in loaded}
    if "train" not in splits:
        raise TaskError(f"{path}: the saved DatasetDict has no 'train' split (splits: {', '.join(splits)})")
    test = next((splits[s] for s in TEST_STEMS if s in splits), None)
    return _decode_class_labels(splits["train"]), (_decode_class_labels(test) if test is not None else None)


def _decode_class_labels(ds) -> list[dict]:
    """Turn ``ClassLabel`` integers back into their names so that label names survive."""
    import datasets

    rows = ds.to_list()
    for key, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel):
            for row in rows:
                if row[key] is not None:  # -1 marks an unlabelled row: reported as a missing label
                    row[key] = feature.int2str(row[key]) if row[key] >= 0 else None
    return rows


def _detect_columns(
    rows: list[dict], where: str, *, text_column, pair_column, label_column
) -> tuple[str, str | None, str]:
    available = [k for k in rows[0] if k != "__line__"]

    def pick(explicit: str | None, candidates: tuple[str, ...], what: str, flag: str, required: bool) -> str | None:
        if explicit:
            if explicit not in rows[0]:
                raise TaskError(f"{where}: no column {explicit!r} (columns: {', '.join(available)}); fix {flag}")
            return explicit
        lowered = {k.lower(): k for k in available}
        found = next((lowered[c] for c in candidates if c in lowered), None)
        if found is None and required:
            raise TaskError(f"{where}: no {what} column found (columns: {', '.join(available)}); name it with {flag}")
        return found

    text = pick(text_column, TEXT_COLUMNS, "text", "--text-column", True)
    label = pick(label_column, LABEL_COLUMNS, "label", "--label-column", True)
    pair = pick(pair_column, PAIR_COLUMNS, "text-pair", "--pair-column", False)
    if pair == text:
        pair = None
    if label in (text, pair):
        raise TaskError(
            f"{where}: column {label!r} is taken as both the label and the "
            f"{'text' if label == text else 'pair'}; name the right columns with --text-column, --pair-column "
            "and --label-column"
        )
    return text, pair, label


def _columns(rows: list[dict], keys: tuple[str, str | None, str], where: str, first: tuple | None = None):
    """Texts, pairs and class keys (see ``_label_value``) of ``rows``, and ``first``: the first label with its place
    and kind (text, number or true/false), which every row, held-out ones included, must share."""
    text_key, pair_key, label_key = keys
    texts, pairs, labels = [], [] if pair_key else None, []
    for i, row in enumerate(rows):
        at = f"line {row['__line__']}" if "__line__" in row else f"row {i + 1}"
        text, label = row.get(text_key), row.get(label_key)
        if text is None or (isinstance(text, float) and np.isnan(text)):
            raise TaskError(f"{where} {at}: missing text in column {text_key!r}; fill it or drop the row")
        if label is None or label == "" or (isinstance(label, numbers.Real) and np.isnan(label)):
            raise TaskError(f"{where} {at}: missing label in column {label_key!r}; fill it or drop the row")
        if isinstance(label, (list, dict)):
            raise TaskError(
                f"{where} {at}: label must be a single value, got {type(label).__name__} (multi-label tasks "
                "are not supported)"
            )
        if type(label) is not str:
            label = _label_value(label)
        kind = _LABEL_KINDS.get(type(label), "text")
        if first is None:
            first = (label, f"{where} {at}", kind)
        elif kind != first[2]:
            raise TaskError(
                f"{where} {at}: label {label!r} is {kind} but the label at {first[1]} ({first[0]!r}) is {first[2]}; "
                "write every label the same way (all text, all numbers or all true/false)"
            )
        texts.append(str(text))
        labels.append(label)
        if pair_key is not None:
            pairs.append("" if row.get(pair_key) is None else str(row[pair_key]))
    return texts, pairs, labels, first


def _label_value(label):
    """The class a label names, the same for every file format: text stays as written, booleans stay booleans and
    numbers (numpy's too) compare by value, so 1 and 1.0 are one class, named "1"."""
    if isinstance(label, (bool, np.bool_)):
        return bool(label)
    if isinstance(label, numbers.Integral):
        return int(label)
    if isinstance(label, numbers.Real):
        return int(label) if float(label).is_integer() else float(label)
    return label if isinstance(label, str) else str(label)


_LABEL_KINDS = {bool: "true/false", int: "a number", float: "a number"}  # of a _label_value; anything else is text


def _holdout(train: Split, fraction: float, seed: int, where: str) -> tuple[Split, Split]:
    from ._task import stratified_indices

    if not 0 < fraction < 1:
        raise TaskError(f"test fraction must be between 0 and 1, got {fraction}")
    n_test = max(1, round(len(train) * fraction))
    if len(train) - n_test < 2:
        raise TaskError(
            f"{where}: only {len(train)} rows, too few to hold out a test split; add data or give a test file"
        )
    test_idx = stratified_indices(train.labels, n_test, seed, leave=1)
    mask = np.ones(len(train), dtype=bool)
    mask[test_idx] = False
    return train.select(np.flatnonzero(mask)), train.select(test_idx)


def _label_sort_key(label) -> tuple:
    return (0, label, "") if isinstance(label, (int, float)) else (1, 0, str(label))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
