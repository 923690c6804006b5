"""scripts/matrix.py: rows with each preset's time against the best other preset's, and the table."""
import importlib.util

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("matrix", ROOT / "scripts" / "matrix.py")
matrix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(matrix)


def figures(**times):
    return {"presets": {p: {"time_to_target_s": t, "final_accuracy": 0.86, "worst_final_accuracy": 0.85,
                            "bytes_per_peer_iter": 1000.0, "x_ideal": None if t is None else t / 4}
                        for p, t in times.items()},
            "ideal": {"time_to_target_s": 4.0}}


def test_each_preset_against_the_best_other_one():
    rows = {r["preset"]: r for r in matrix.rows_of("hetero-4", figures(bsp=200.0, pge=40.0, full=20.0, local=None))}
    assert rows["full"]["x_best_other"] == 0.5   # half the time of pge, the best of the others
    assert rows["pge"]["x_best_other"] == 2.0    # against full
    assert rows["local"]["x_best_other"] is None  # never reached the target
    assert rows["full"]["x_ideal"] == 5.0 and rows["full"]["scenario"] == "hetero-4"


def test_the_table_names_every_scenario_and_its_ideal():
    rows = matrix.rows_of("wan-8", figures(full=30.0, bsp=None))
    md = matrix.markdown(rows, "python3 scripts/matrix.py --presets full,bsp", {"wan-8": {"time_to_target_s": 4.0}})
    assert "| wan-8 | full | 30.0 | 0.8600 | 0.8500 | 1,000 | - | 7.50x |" in md
    assert "| wan-8 | bsp | - |" in md and "wan-8 4.0 s" in md
