"""The seed corpus, generated from the scenarios: corpus/seeds/NAME.ops is the ops of
tests/scenarios/NAME.ops without its expects (and comments), under a header naming it.

`rmapfuzz seeds` writes them; `rmapfuzz seeds --check` (and a test) says whether they are
in sync, so a scenario's change reaches the fuzzer's seeds.
"""

from __future__ import annotations

from pathlib import Path

from fuzz.script.ops import Op, Script, format_script, parse_file

SCENARIO_DIR = "tests/scenarios"
SEED_DIR = "corpus/seeds"
SCRIPT_GLOB = "*.ops"


def seed_text(scenario: Script, name: str) -> str:
    """The seed of scenario (its file name is name): its ops, under a header naming it."""
    ops = Script(path=scenario.path, frames=scenario.frames,
                 steps=[step for step in scenario.steps if isinstance(step, Op)])
    return f"# seed: the ops of {SCENARIO_DIR}/{name}, without its expects\n" + format_script(ops)


def seed_texts(scenario_dir: Path) -> dict[str, str]:
    """Each scenario's seed, by file name."""
    return {path.name: seed_text(parse_file(str(path)), path.name)
            for path in sorted(scenario_dir.glob(SCRIPT_GLOB))}


def stale_seeds(scenario_dir: Path, seed_dir: Path) -> list[str]:
    """The seed files that are missing, differ from their scenario's seed, or have no
    scenario; empty when seed_dir is in sync."""
    wanted = seed_texts(scenario_dir)
    present = {path.name for path in seed_dir.glob(SCRIPT_GLOB)}
    differ = [name for name, text in wanted.items()
              if name not in present or (seed_dir / name).read_text(encoding="utf-8") != text]
    return sorted(differ + [name for name in present if name not in wanted])


def write_seeds(scenario_dir: Path, seed_dir: Path) -> list[str]:
    """Bring seed_dir in sync with scenario_dir: write each seed that is stale, remove each
    seed without a scenario. Returns the names it changed."""
    wanted = seed_texts(scenario_dir)
    changed = stale_seeds(scenario_dir, seed_dir)
    seed_dir.mkdir(parents=True, exist_ok=True)
    for name in changed:
        if name in wanted:
            (seed_dir / name).write_text(wanted[name], encoding="utf-8")
        else:
            (seed_dir / name).unlink()
    return changed
