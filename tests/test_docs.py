"""The documentation covers what the code offers: commands, options, exit codes, names, modules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

import pebble_migrate
from pebble_migrate import errors
from pebble_migrate.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CLI_DOC = DOCS / "cli.md"
ARCHITECTURE = DOCS / "architecture.md"
PACKAGE = ROOT / "src" / "pebble_migrate"


def read(path: Path) -> str:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return path.read_text()


def all_docs() -> str:
    return "\n".join(read(p) for p in sorted(DOCS.glob("*.md")))


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Yield ("backup create", command) for every command and group below `group`."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        path = (*prefix, name)
        yield " ".join(path), command
        if isinstance(command, click.Group):
            yield from walk(command, path)


COMMANDS = sorted(walk(cli), key=lambda item: item[0])
LEAVES = [(path, cmd) for path, cmd in COMMANDS if not isinstance(cmd, click.Group)]


def section(text: str, heading: str) -> str:
    """Return the body of the `## heading` section (up to the next heading of level 1-2)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", text, re.M | re.S)
    assert match is not None, f"no '## {heading}' section"
    return match.group(1)


# --- (a) every command has help text and its place in docs/cli.md ---------------------


def test_the_walk_finds_the_commands() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {"status", "up", "down", "backup", "backup restore", "backup cleanup"} <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_has_help_text(path: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"`{path}` has no help text"
    for param in command.params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"`{path}` option {param.opts} has no help"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_is_documented_in_cli_md(path: str, command: click.Command) -> None:
    text = read(CLI_DOC)
    if isinstance(command, click.Group):
        assert f"`{path} " in text or f"`{path}`" in text, f"`{path}` is not in docs/cli.md"
    else:
        body = section(text, path)
        assert f"pebble-migrate {path}" in body, f"the `{path}` section has no synopsis"


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[p for p, _ in LEAVES])
def test_every_option_and_argument_is_documented(path: str, command: click.Command) -> None:
    text = read(CLI_DOC)
    body = section(text, path)
    for param in command.params:
        if isinstance(param, click.Argument):
            name = param.human_readable_name
            assert name in body, f"argument {name} of `{path}` is not in its section"
            continue
        for flag in param.opts:
            if flag in ("-h", "--help"):
                continue
            assert f"`{flag}" in text or f" {flag}" in text, f"`{path}` {flag} is undocumented"


# --- (b) every exit code is in the table -----------------------------------------------


def exit_code_rows() -> dict[str, str]:
    """Return {code: row} for the rows of the exit-code table in docs/cli.md."""
    rows = {}
    for line in section(read(CLI_DOC), "Exit codes").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0].isdigit():
            rows[cells[0]] = line
    return rows


def test_exit_code_constants_exist() -> None:
    names = [n for n in dir(errors) if n.startswith("EXIT_")]
    assert len(names) >= 9


@pytest.mark.parametrize("name", sorted(n for n in dir(errors) if n.startswith("EXIT_")))
def test_exit_code_is_in_the_table(name: str) -> None:
    value = getattr(errors, name)
    rows = exit_code_rows()
    assert str(value) in rows, f"exit code {value} ({name}) has no row in docs/cli.md"
    assert f"`{name}`" in rows[str(value)], f"the row for {value} does not name {name}"


def test_success_has_a_row_too() -> None:
    assert "0" in exit_code_rows()


def test_cli_help_lists_the_same_exit_codes() -> None:
    rows = exit_code_rows()
    help_text = " ".join((cli.help or "").split())
    for code in rows:
        if code != "0":
            assert code in help_text, f"`pebble-migrate --help` does not mention exit {code}"


# --- (c) the README's two commands -----------------------------------------------------


def test_readme_shows_make_demo_and_make_test() -> None:
    blocks = re.findall(r"```[a-z]*\n(.*?)```", read(README), re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    assert any(line.startswith("make demo") for line in lines)
    assert any(line.startswith("make test") for line in lines)


def test_the_makefile_has_the_targets_the_readme_names() -> None:
    makefile = read(ROOT / "Makefile")
    for target in re.findall(r"`make ([a-z-]+)`", read(README)):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no `make {target}`"


# --- (d) every public name is documented ------------------------------------------------


@pytest.mark.parametrize("name", pebble_migrate.__all__)
def test_public_name_is_documented(name: str) -> None:
    pattern = rf"pebble_migrate\.{re.escape(name)}(?![A-Za-z0-9_])"
    assert re.search(pattern, all_docs()), f"pebble_migrate.{name} is not in docs/"


ERRORS = sorted(
    name
    for name in pebble_migrate.__all__
    if isinstance(getattr(pebble_migrate, name), type)
    and issubclass(getattr(pebble_migrate, name), pebble_migrate.MigrateError)
)


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_has_a_row_in_the_errors_table(name: str) -> None:
    table = (DOCS / "integration.md").read_text().split("### Errors", 1)[1]
    assert f"| `pebble_migrate.{name}` |" in table, f"{name} has no row in integration.md's errors"


def test_startup_api_and_backup_verbs_are_documented() -> None:
    text = all_docs()
    for name in (
        "check_and_run_startup_migrations",
        "default_startup_options",
        "StartupOptions",
        "read_state",
        "create_backup",
        "list_backups",
        "restore_backup",
        "cleanup_backups",
    ):
        assert name in pebble_migrate.__all__
        assert f"pebble_migrate.{name}" in text


@pytest.mark.parametrize(
    "field",
    [
        "run_migrations",
        "logger",
        "backup_enabled",
        "check_disk_space",
        "database_size_multiplier",
        "cli_name",
        "registry",
        "backup_dir",
        "backup_keep",
        "backup_older_than",
        "chunk_policy",
        "handle_signals",
    ],
)
def test_every_startup_option_is_in_the_integration_table(field: str) -> None:
    assert field in pebble_migrate.StartupOptions.__dataclass_fields__
    assert f"| `{field}` |" in read(DOCS / "integration.md")


def test_the_startup_option_list_above_is_complete() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", read(DOCS / "integration.md"), re.M))
    assert set(pebble_migrate.StartupOptions.__dataclass_fields__) <= documented


# --- dry runs, the ctx members, the start-up example -----------------------------------

READ_ONLY = {"status", "history", "validate", "backup list", "backup verify"}
CHANGING = [path for path, _ in LEAVES if path not in READ_ONLY]


def test_the_read_only_commands_exist() -> None:
    assert READ_ONLY.issubset(path for path, _ in LEAVES)


@pytest.mark.parametrize("path", CHANGING, ids=CHANGING)
def test_every_command_that_changes_something_documents_its_dry_run(path: str) -> None:
    body = section(read(CLI_DOC), path)
    assert "--dry-run" in body, f"the `{path}` section does not say what --dry-run does"


# Members the executor uses to drive a context; migrations never call them.
# The executor's side of the context: how it collects the work and judges the run.
CTX_INTERNAL = {
    "check_finished",
    "commit_work",
    "failure",
    "record",
    "release",
    "take_batch",
    "wrote_directly",
}


def test_every_ctx_member_is_in_the_ctx_table() -> None:
    table = section(read(DOCS / "writing-migrations.md"), "`ctx` at a glance")
    ctx = pebble_migrate.MigrationContext
    names = {n for n in dir(ctx) if not n.startswith("_")} | {"db", "log", "migration"}
    for name in sorted(names - CTX_INTERNAL):
        assert f"`ctx.{name}" in table, f"ctx.{name} is not in the `ctx` table"


def test_the_startup_example_recovers_a_restore_before_opening() -> None:
    blocks = re.findall(r"```python\n(.*?)```", read(DOCS / "integration.md"), re.S)
    example = next(b for b in blocks if "check_and_run_startup_migrations" in b)
    recover = example.find("recover_interrupted_restore(")
    assert 0 <= recover < example.find("rocksdict.Rdict("), "recover before the open"


# --- modules and links ------------------------------------------------------------------


MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_module_is_in_the_architecture_table(module: str) -> None:
    assert f"| `{module}` |" in read(ARCHITECTURE), f"{module} is not in docs/architecture.md"


def slug(heading: str) -> str:
    """Return the anchor GitHub gives a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", read(path), flags=re.S)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(r"```.*?```", "", read(path), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.name} links to missing {target}"
        if anchor:
            assert anchor in anchors(linked), f"{path.name} links to missing anchor {target}"


def test_slug_matches_github() -> None:
    assert slug("`ctx.db`: the escape hatch") == "ctxdb-the-escape-hatch"
    assert slug("`down` and `validate`") == "down-and-validate"
    assert slug("New databases and databases with data") == "new-databases-and-databases-with-data"


def test_the_state_machine_table_is_the_one_in_the_code() -> None:
    from pebble_migrate.transitions import table_markdown

    assert table_markdown() in read(DOCS / "architecture.md")
