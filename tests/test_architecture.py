"""The public API and the one-way flow of imports (policy at the bottom, faces at the top)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import modelhaul

SRC = Path(modelhaul.__file__).parent

# A module may import only from its own layer or the layers below it.
# Names are modules or packages (the longest listed prefix of a module decides its layer).
LAYERS: list[tuple[str, ...]] = [
    ("errors", "policy", "remedies"),
    ("config", "events"),
    ("http", "disk"),
    ("engine",),
    (
        "manager",
        "sync",
        "store.chunks",
        "store.repo",
        "store.listing",
        "store.verify",
        "store.localdir",
        "store.statedb",
        "sources",
        "fleet",
    ),
    ("store.pull", "store.health", "store.inventory", "mirror"),
    ("store.availability", "guidance", "doctor"),
    ("server",),
    ("client",),
    ("cluster",),  # the Ray face: pull_on_ray (imports ray only when it runs)
    ("cli",),
]


def _layer_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        for i, names in enumerate(LAYERS):
            if head in names:
                return i
    raise AssertionError(f"module {module} is in no layer; add it to LAYERS")


def _internal_imports(path: Path) -> set[str]:
    rel = path.relative_to(SRC).with_suffix("")
    package = list(rel.parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            if target:
                found.add(".".join(target))
            else:
                found.update(a.name for a in node.names)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("modelhaul.")
        ):
            found.add(node.module.removeprefix("modelhaul."))
    return found


def test_all_is_sorted_and_importable() -> None:
    assert modelhaul.__all__ == sorted(modelhaul.__all__)
    assert set(modelhaul.__all__) == set(modelhaul._EXPORTS)
    for name in modelhaul.__all__:
        assert getattr(modelhaul, name) is not None


def test_imports_flow_one_way() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == SRC:
            continue  # the facade re-exports everything
        rel = ".".join(path.relative_to(SRC).with_suffix("").parts)
        targets = _internal_imports(path)
        if path.name == "__init__.py" and not targets:
            continue  # a package's docstring
        own = _layer_of(rel.removesuffix(".__init__"))
        for target in targets:
            if _layer_of(target) > own:
                offenders.append(f"{rel} imports {target}")
    assert not offenders, offenders


def _imports_aiohttp(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "aiohttp" for a in node.names
        ):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module or "").split(".")[0] == "aiohttp"
        ):
            return True
    return False


def test_only_http_imports_aiohttp() -> None:
    """http/ is the one package that speaks aiohttp; the doctor asks through http/probe.py."""
    users = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if not path.relative_to(SRC).as_posix().startswith("http/") and _imports_aiohttp(path)
    ]
    assert not users, users


def test_get_starts_without_the_heavy_dependencies() -> None:
    """'modelhaul get' must not pay for huggingface_hub, the server, the demo or rich at start-up."""
    import subprocess
    import sys

    code = (
        "import sys; from modelhaul.cli.main import build_parser; "
        "build_parser(['get', 'http://x/y']).parse_args(['get', 'http://x/y']); "
        "print(','.join(m for m in ('huggingface_hub', 'fastapi', 'uvicorn', 'modelhaul.http.demo_origin', 'rich') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_client_knows_neither_the_server_nor_the_cli() -> None:
    """client/ is what a remote caller needs: it must work without the server's dependencies."""
    offenders = []
    for path in (SRC / "client").rglob("*.py"):
        for target in _internal_imports(path):
            if target.split(".")[0] in ("server", "cli"):
                offenders.append(f"{path.relative_to(SRC)} imports {target}")
    assert not offenders, offenders


# Where a face still reaches past the manager (issue 14). Remove an entry when its import
# goes; add none.
_FACES_REACHING_IN = {
    ("cli.demo", "http.demo_origin"),  # deliberate: the demo command starts the demo origin server
}


def test_faces_import_neither_the_engine_nor_the_transport() -> None:
    """cli, client and server use the manager, sync, store, sources, doctor and public types,
    never the engine, http/ or disk/."""
    offenders = set()
    for face in ("cli", "client", "server"):
        for path in (SRC / face).rglob("*.py"):
            rel = ".".join(path.relative_to(SRC).with_suffix("").parts)
            for target in _internal_imports(path):
                if target.split(".")[0] in ("engine", "http", "disk"):
                    offenders.add((rel, target))
    assert offenders == _FACES_REACHING_IN, (
        f"new: {sorted(offenders - _FACES_REACHING_IN)}; "
        f"gone (drop from the list): {sorted(_FACES_REACHING_IN - offenders)}"
    )


# ---------------------------------------------------------------------- rooms of one sitting

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# Rooms still too big (issue 14), each to be split; remove an entry when it fits, add none.
_TOO_BIG: set[str] = set()


def _sources() -> list[tuple[str, ast.Module, str]]:
    return [
        (path.relative_to(SRC).as_posix(), ast.parse(text), text)
        for path in sorted(SRC.rglob("*.py"))
        for text in [path.read_text()]
    ]


def test_every_module_and_function_can_be_read_in_one_sitting() -> None:
    too_big = set()
    for rel, tree, text in _sources():
        if text.count("\n") > MAX_MODULE_LINES:
            too_big.add(rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    too_big.add(f"{rel}:{node.name}")
    assert too_big == _TOO_BIG, (
        f"too big: {sorted(too_big - _TOO_BIG)}; fits now (drop it): {sorted(_TOO_BIG - too_big)}"
    )


# ---------------------------------------------------------------------- nothing written twice

# Six or more consecutive lines that stand again elsewhere in src/, the same to the letter once
# blanks, comments, imports and whitespace are gone, are one piece of code written twice.
DUPLICATE_RUN_LINES = 6
# Pairs of modules (sorted) whose repetition is deliberate, each with why. Add one only with a
# reason a reader accepts; remove it when the repetition goes.
_DUPLICATES_ALLOWED = {
    # add() takes the downloader's target arguments by name, typed and documented: the
    # manager's public call, not a mirror of the engine's body.
    ("engine/downloader.py", "manager/downloads.py"),
    # SyncDownloadManager takes DownloadManager's constructor arguments, typed for its callers.
    ("manager/downloads.py", "sync.py"),
    # Small error classes: each keyword-only constructor names the facts its error carries.
    ("errors.py", "errors.py"),
    # A job and its saved row name the same fields: the row is what survives a restart.
    ("server/jobs.py", "server/persist.py"),
    # TlsBody subclasses SocketBody: its constructor takes the same arguments by name, plus the
    # TLS layer, and passes them on.
    ("http/bodies.py", "http/tlsbody.py"),
    # pull and verify end alike (a failure rendered, a cancel recorded); the pull command is
    # being reshaped (--peers) and takes a shared ending then.
    ("cli/models.py", "cli/models.py"),
}
_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}


def _code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, the line's tokens joined without whitespace) for each line that holds code
    other than an import."""
    imports: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            assert node.end_lineno is not None
            imports.update(range(node.lineno, node.end_lineno + 1))
    tokens: dict[int, list[str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in _NOT_CODE and tok.start[0] not in imports:
            tokens.setdefault(tok.start[0], []).append(tok.string)
    return [(n, "".join(tokens[n])) for n in sorted(tokens)]


def _duplicated_blocks(sources: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Each pair of modules sharing a run of DUPLICATE_RUN_LINES code lines -> where, once."""
    seen: dict[tuple[str, ...], list[tuple[str, int]]] = {}
    for rel, text in sources:
        lines = _code_lines(text)
        for i in range(len(lines) - DUPLICATE_RUN_LINES + 1):
            run = tuple(code for _, code in lines[i : i + DUPLICATE_RUN_LINES])
            seen.setdefault(run, []).append((rel, lines[i][0]))
    pairs: dict[tuple[str, str], str] = {}
    for places in seen.values():
        for n, (a, line_a) in enumerate(places):
            for b, line_b in places[n + 1 :]:
                (ka, la), (kb, lb) = sorted([(a, line_a), (b, line_b)])
                pairs.setdefault((ka, kb), f"{ka}:{la} ~ {kb}:{lb}")
    return pairs


def test_the_duplicate_finder_finds_a_copied_block() -> None:
    block = "def f(x):\n    y = x + 1\n    z = y * 2\n    w = z - 3\n    v = w / 4\n    return v\n"
    found = _duplicated_blocks([("a.py", block), ("b.py", "# other\n\n" + block)])
    assert found == {("a.py", "b.py"): "a.py:1 ~ b.py:3"}
    assert _duplicated_blocks([("a.py", block), ("b.py", block.replace("1", "2"))]) == {}


def test_no_block_is_written_twice() -> None:
    found = _duplicated_blocks([(rel, text) for rel, _, text in _sources()])
    new = {pair: where for pair, where in found.items() if pair not in _DUPLICATES_ALLOWED}
    assert not new, f"duplicated blocks: {sorted(new.values())}"
    gone = _DUPLICATES_ALLOWED - found.keys()
    assert not gone, f"no longer duplicated (drop from the list): {sorted(gone)}"


def test_no_private_name_crosses_a_module_boundary() -> None:
    """A name another module needs is public: ``from .x import _y`` is a smell we do not keep."""
    crossing = []
    for rel, tree, _ in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("modelhaul")
            ):
                crossing += [
                    f"{rel}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not crossing, crossing


def _swallows_cancellation(node: ast.AST) -> bool:
    if isinstance(node, ast.ExceptHandler):
        caught = node.type
        names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        return caught is None or any(
            isinstance(n, ast.Name) and n.id == "BaseException" for n in names
        )
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "suppress"
        and any(isinstance(a, ast.Name) and a.id == "BaseException" for a in node.args)
    )


def test_cancellation_always_propagates() -> None:
    """No bare ``except:``, ``except BaseException`` or ``suppress(BaseException)``: catching
    those swallows a cancel (the style guide's rule; trio and asyncio both depend on it)."""
    offenders = [
        f"{rel}:{node.lineno}"
        for rel, tree, _ in _sources()
        for node in ast.walk(tree)
        if _swallows_cancellation(node)
    ]
    assert not offenders, offenders


# Issue 14: the layers hold inside packages too. Each package's own modules form a graph with no
# cycle, so every package can be read bottom-up like the whole.
_PACKAGES = ("engine", "http", "manager", "store", "disk", "server", "doctor", "guidance", "cli")
_PACKAGES += ("client", "policy", "sources", "mirror", "fleet", "cluster")
# Package cycles still to be broken: exact, to shrink; remove an entry when it is gone, add none
# (none today). A function-level or TYPE_CHECKING import still makes a loop to read.
_CYCLES_INSIDE: dict[str, tuple[str, ...]] = {}
# Package __init__ modules that hold code on purpose (and so import their own modules).
# guidance/__init__.py is the dispatcher (``explain``); its parts must never import it back.
# cluster/__init__.py is the public face (``modelhaul.cluster.pull_on_ray``).
_INIT_WITH_CODE = {"guidance", "cluster"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _package_graph(package: str) -> dict[str, set[str]]:
    """Each module of ``package`` (subpackages included) -> the modules of it that it imports."""
    paths = sorted((SRC / package).rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        here = _module_name(path)
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                rel = path.relative_to(SRC).with_suffix("").parts[:-1]
                base = list(rel[: len(rel) - (node.level - 1)])
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif (node.module or "").startswith("modelhaul."):
                target = node.module.removeprefix("modelhaul.")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                hit = sub if sub in modules else target
                if hit in modules and hit != here:
                    edges.add(hit)
        graph[here] = edges
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> tuple[str, ...]:
    """Kahn's topological sort; what it cannot order holds a cycle, returned as its modules."""
    indegree = {m: 0 for m in graph}
    for targets in graph.values():
        for t in targets:
            indegree[t] += 1
    ready = [m for m, n in indegree.items() if n == 0]
    while ready:
        for t in graph[ready.pop()]:
            indegree[t] -= 1
            if indegree[t] == 0:
                ready.append(t)
    left = {m for m, n in indegree.items() if n > 0}
    if not left:
        return ()
    # Each leftover is imported by another leftover: walk those importers back until a module
    # repeats; that loop, reversed, is a cycle in import order.
    path = [min(left)]
    while True:
        prev = min(m for m in left if path[-1] in graph[m])
        if prev in path:
            return tuple(reversed(path[path.index(prev) :]))
        path.append(prev)


def test_the_modules_of_each_package_import_each_other_without_a_cycle() -> None:
    cycles = {p: c for p in _PACKAGES if (c := _a_cycle(_package_graph(p)))}
    assert cycles == _CYCLES_INSIDE, " ; ".join(
        f"{p}: {' -> '.join([*c, c[0]])}" for p, c in sorted(cycles.items())
    )


def test_package_inits_re_export_nothing_and_are_never_imported_back() -> None:
    """An ``__init__`` is a docstring; one that holds code (listed) is the top of its package."""
    exporting, importing_back = set(), []
    for package in _PACKAGES:
        graph = _package_graph(package)
        for module, targets in graph.items():
            inits = {t for t in targets if (SRC / t.replace(".", "/") / "__init__.py").exists()}
            is_init = (SRC / module.replace(".", "/") / "__init__.py").exists()
            if is_init and targets and module not in _INIT_WITH_CODE:
                exporting.add(module)
            importing_back += [f"{module} imports {t}" for t in inits if module.startswith(t + ".")]
    assert exporting == set(), f"__init__ importing its own modules: {sorted(exporting)}"
    assert not importing_back, importing_back


# A command-line flag as a hint would write it: -x, -H, --timeout, --max-size.
_FLAG = re.compile(r"(?<![\w-])--?[a-zA-Z][a-zA-Z-]*")
# (module, flag) that may stand in a string outside cli/: where a flag is data, not the CLI's
# words. Add none for a hint: below cli/ a next step that names a setting is a Remedy.
_FLAG_WORDS_ALLOWED = {
    ("doctor/filesystem.py", "-ld"),  # 'ls -ld': another program's flag
    ("guidance/local.py", "-ld"),
    ("cluster/node.py", "-c"),  # python -c / -m: how a node starts the command line
    ("cluster/node.py", "-m"),
    ("store/statedb.py", "-wal"),  # SQLite's file suffixes
    ("store/statedb.py", "-shm"),
}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_cli_flags_are_named_in_cli_only() -> None:
    """Hints that name a flag are the CLI's words (cli/words.py): below cli/ a next step that
    names a setting is a Remedy, worded by each face. Docstrings may name flags."""
    found = set()
    for rel, tree, _ in _sources():
        if rel.startswith("cli/"):
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
            ):
                found |= {(rel, flag) for flag in _FLAG.findall(node.value)}
    assert found <= _FLAG_WORDS_ALLOWED, sorted(found - _FLAG_WORDS_ALLOWED)
    assert found == _FLAG_WORDS_ALLOWED, f"moved (drop it): {sorted(_FLAG_WORDS_ALLOWED - found)}"
