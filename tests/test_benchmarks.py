"""The benchmark scripts run end to end on tiny budgets (their figures come from full runs, see docs/misc/benchmarks.md)."""

import json
import math
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sb3_acktr import ACKTR

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import critic_curvature
import distributed_cost
import first_reach
import profile_update
import sample_efficiency
import save_size
import subset_statistics
import train_cost
import training_diagnostics
import training_speed
import unseen_tasks


def test_sample_efficiency_runs_resumes_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sample_efficiency, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(sample_efficiency, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sample_efficiency, "DOCS", tmp_path / "docs")
    readme = tmp_path / "README.md"
    readme.write_text("Results:\n<!-- results-table-start -->\nstale\n<!-- results-table-end -->\nMore.\n")
    monkeypatch.setattr(sample_efficiency, "README", readme)
    tiny = dict(threshold=20, budget=1_600, eval_freq=800, eval_episodes=2)
    monkeypatch.setitem(sample_efficiency.TASKS, "CartPole-v1", tiny)
    for algo in ("acktr", "a2c"):
        assert sample_efficiency.train("CartPole-v1", algo, 0, None).endswith(" s")
    assert sample_efficiency.train("CartPole-v1", "acktr", 0, None).endswith("already done")

    sample_efficiency.report()
    first = json.loads((tmp_path / "results" / "sample_efficiency.json").read_text())
    table, first_curves = first["table"], first["curves"]
    assert [(row["algo"], row["seeds"]) for row in table] == [("acktr", 1), ("a2c", 1)]
    for row in table:
        assert row["budget"] == 1_600 and row["fps_mean"] > 0
        assert row["a2c_training_level"] == table[1]["training_return_mean"]
        assert row["reached"] == 0 or 0 < row["steps_mean"] <= 1_600
    assert (tmp_path / "results" / "sample_efficiency.csv").read_text().startswith("env,algo,seeds")
    assert (tmp_path / "docs" / "sample_efficiency_CartPole-v1.png").stat().st_size > 0
    readme_lines = readme.read_text().splitlines()
    assert readme_lines[:2] == ["Results:", "<!-- results-table-start -->"] and readme_lines[-2:] == [
        "<!-- results-table-end -->",
        "More.",
    ]
    assert readme_lines[4].startswith("| CartPole-v1 (1.6k), timesteps to 20 | ") and readme_lines[4].endswith(" | - |")

    # The runs folder is not versioned: a report without A2C's runs keeps A2C's row and curves from the last one.
    for path in sorted((tmp_path / "runs" / "CartPole-v1" / "a2c").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    sample_efficiency.report()
    again = json.loads((tmp_path / "results" / "sample_efficiency.json").read_text())
    assert again["table"] == table
    assert again["curves"]["CartPole-v1"]["a2c"][0]["returns"] == first_curves["CartPole-v1"]["a2c"][0]["returns"]

    # A further seed joins the last report's seeds with --keep-seeds; without, the runs here make the row.
    sample_efficiency.train("CartPole-v1", "acktr", 1, None)
    for path in sorted((tmp_path / "runs" / "CartPole-v1" / "acktr" / "seed_0").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    sample_efficiency.report(keep_seeds=True)
    merged = json.loads((tmp_path / "results" / "sample_efficiency.json").read_text())
    assert [run["seed"] for run in merged["curves"]["CartPole-v1"]["acktr"]] == [0, 1]
    assert merged["curves"]["CartPole-v1"]["acktr"][0] == first_curves["CartPole-v1"]["acktr"][0]
    assert merged["table"][0]["seeds"] == merged["table"][0]["a2c_level_seeds"] == 2
    sample_efficiency.report()
    alone = json.loads((tmp_path / "results" / "sample_efficiency.json").read_text())
    assert [run["seed"] for run in alone["curves"]["CartPole-v1"]["acktr"]] == [1] and alone["table"][0]["seeds"] == 1
    table = alone["table"]

    # Other settings: their own folder, their own table against A2C's last level; the report's files stay as they were.
    variant = tmp_path / "variant"
    sample_efficiency.train("CartPole-v1", "acktr", 0, None, ["vf_kl_clip:0.003"], variant)
    assert "vf_kl_clip" in (variant / "CartPole-v1" / "acktr" / "seed_0" / "done.json").read_text()
    capsys.readouterr()
    sample_efficiency.report_variant(variant)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[2].startswith("| CartPole-v1") and "| acktr | " in printed[2]
    assert json.loads((tmp_path / "results" / "sample_efficiency.json").read_text())["table"] == table

    # The final policy again, over more episodes: the same episodes each time (a seeded environment, greedy actions).
    returns = sample_efficiency.final_policy_returns("CartPole-v1", "acktr", 0, 3, variant)
    assert len(returns) == 3 and all(8 <= value <= 500 for value in returns)
    assert sample_efficiency.final_policy_returns("CartPole-v1", "acktr", 0, 3, variant) == returns
    with pytest.raises(FileNotFoundError, match="no finished run"):
        sample_efficiency.final_policy_returns("CartPole-v1", "acktr", 7, 3, variant)
    with pytest.raises(ValueError, match="frame skipping"):
        sample_efficiency.final_policy_returns("BreakoutNoFrameskip-v4", "acktr", 0, 3, variant)

    readme.write_text("No table here.\n")
    with pytest.raises(ValueError, match="no results table"):
        sample_efficiency.write_readme_table(table)


def test_compact_json_puts_each_list_of_numbers_or_of_their_lists_on_one_line() -> None:
    value = dict(
        table=[dict(env="a [1,2]", steps=None)], curves=dict(a=[dict(returns=[1.5, -2e-05, None], records=[[3, 4.5], [7, 8]])])
    )
    text = sample_efficiency.compact_json(value)
    assert json.loads(text) == value
    assert '"returns": [1.5, -2e-05, null]' in text and '"records": [[3, 4.5], [7, 8]]' in text and '"env": "a [1,2]"' in text


def test_the_readme_table_is_the_reports() -> None:
    report = json.loads((sample_efficiency.RESULTS / "sample_efficiency.json").read_text())
    _, table, _ = sample_efficiency.readme_parts(sample_efficiency.README.read_text())
    assert table == sample_efficiency.readme_table(report["table"])


@pytest.mark.parametrize(
    "row, measure, cell",
    [
        (
            dict(seeds=3, reached=2, steps_mean=650_000.0, steps_std=50_000.0, final_return_mean=17.56),
            "reached",
            "2 / 3, at 650k ± 50k (final 17.6 ± 0.1)",
        ),
        (
            dict(seeds=3, reached=0, steps_mean=None, steps_std=None, final_return_mean=1.9),
            "reached",
            "0 / 3 (final 1.9 ± 0.1)",
        ),
        (
            dict(seeds=5, reached=4, steps_mean=16_972.8, steps_std=7_955.9, final_return_mean=500.0),
            "timesteps",
            "4 / 5 seeds, 17.0k ± 8.0k (final 500 ± 0)",
        ),
        (
            dict(seeds=1, reached=1, steps_mean=2_500.0, steps_std=0.0, final_return_mean=500.0),
            "timesteps",
            "2.5k (final 500)",
        ),
        (dict(seeds=3, reached=3, steps_mean=0.0, steps_std=0.0, final_return_mean=5_089.8), "final", "5,090 ± 0"),
        (dict(seeds=1, reached=0, steps_mean=None, steps_std=None, final_return_mean=276.6), "final", "277 (1 seed)"),
    ],
)
def test_readme_cells_show_each_measure(row: dict, measure: str, cell: str) -> None:
    env_id = "BreakoutNoFrameskip-v4" if measure == "reached" else "CartPole-v1"
    final_std = 0.1 if measure == "reached" else 0.0
    assert sample_efficiency.readme_cell(dict(env=env_id, final_return_std=final_std, **row), measure) == cell


@pytest.mark.parametrize("threshold, expected", [(-math.inf, 800), (math.inf, None)])
def test_first_reach_stops_at_the_threshold(monkeypatch: pytest.MonkeyPatch, threshold: float, expected: int | None) -> None:
    monkeypatch.setitem(
        first_reach.TASKS, "CartPole-v1", dict(first_reach.TASKS["CartPole-v1"], threshold=threshold, budget=1_600)
    )
    assert first_reach.first_reach("CartPole-v1", "acktr", dict(n_steps=10), seed=0, eval_every=800) == expected


def test_training_diagnostics_reads_the_section_and_summarises_each_tenth(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    arguments = training_diagnostics.section_arguments("CartPole-v1", ["vf_coef:0.1", "kl_clip:lin_0.002", "vf_kl_clip:None"])
    assert arguments["vf_coef"] == 0.1 and arguments["ent_coef"] == 0.0 and arguments["vf_kl_clip"] is None
    assert "n_envs" not in arguments
    assert arguments["kl_clip"](0.5) == pytest.approx(0.001) and arguments["learning_rate"](0.5) == pytest.approx(0.125)
    monkeypatch.setitem(
        training_diagnostics.TASKS, "CartPole-v1", dict(training_diagnostics.TASKS["CartPole-v1"], budget=5_000)
    )
    training_diagnostics.train("CartPole-v1", 0, ["target_kl:0.001"], tmp_path)
    table = training_diagnostics.summary(tmp_path, 5_000)
    assert list(table.index) == list(range(10))
    assert (table["kl"] > 0).all() and (table["step factor"] > 0).all() and table["evaluation"].notna().sum() == 2


def test_training_diagnostics_runs_a_panel_task_with_the_library_defaults(tmp_path: Path) -> None:
    assert training_diagnostics.section_arguments("Blackjack-v1", ["ent_coef:0.0", "kl_clip:lin_0.002"])["ent_coef"] == 0.0
    assert training_diagnostics.section_arguments("Blackjack-v1", []) == {}
    assert training_diagnostics.default_budget("Blackjack-v1") == unseen_tasks.PANEL["Blackjack-v1"].budget
    training_diagnostics.train("Blackjack-v1", 0, [], tmp_path, budget=5_000)
    table = training_diagnostics.summary(tmp_path, 5_000)
    assert (table["kl"] > 0).all() and table["evaluation"].notna().sum() == 2


@pytest.mark.parametrize("case", ["mlp-8x20", "mlp-8x10-zoo", "cnn-32x20-zoo"])
def test_train_cost_times_both_algorithms_on_the_same_batch(case: str) -> None:
    result = train_cost.train_ratio(train_cost.CASES[case], n_updates=2, rounds=1)
    assert result["a2c_ms"] > 0 and result["acktr_ms"] > 0
    assert result["ratio"] == pytest.approx(result["acktr_ms"] / result["a2c_ms"])


def test_train_cost_whole_runs_of_mlp_cases_take_at_least_50k_timesteps() -> None:
    assert train_cost.whole_run_updates("cnn-32x20", 10) == 10
    for case_name in ("mlp-8x20", "mlp-16x20-acrobot-zoo", "mlp-8x128-lunarlander-zoo"):
        case = train_cost.CASES[case_name]
        updates = train_cost.whole_run_updates(case_name, 10)
        assert updates >= 100 and updates * case["n_envs"] * case["n_steps"] >= 49_900


def test_wall_clock_counts_atari_frames_as_timesteps(tmp_path: Path) -> None:
    """Two envs; env 0's Monitor logs episodes of 400 frames, ending at 10 s and 20 s."""
    for env_index in (0, 1):
        (tmp_path / f"{env_index}.monitor.csv").write_text('#{"t_start": 0}\nr,l,t\n1.0,400,10.0\n2.0,400,20.0\n')
    # 2 envs x 400 frames = 800 timesteps per episode end, or 200 with 4 frames per timestep.
    assert sample_efficiency.wall_clock_at(tmp_path, np.array([800, 1200, 1600])).tolist() == [10.0, 15.0, 20.0]
    assert sample_efficiency.wall_clock_at(tmp_path, np.array([200, 300, 400]), frame_skip=4).tolist() == [10.0, 15.0, 20.0]


def fake_zoo_folder(folder: Path, t_start: float, env0_rows: str, checkpoints: dict[int, float] | None = None) -> None:
    """A zoo run folder with one env: its Monitor rows ``r,l,t`` and checkpoints (timesteps -> seconds of its clock)."""
    folder.mkdir(parents=True)
    (folder / "0.monitor.csv").write_text(f'#{{"t_start": {t_start}}}\nr,l,t\n{env0_rows}')
    for timesteps, seconds in (checkpoints or {}).items():
        checkpoint = folder / f"rl_model_{timesteps + 5}_steps.zip"  # an ACKTR checkpoint resumes a little earlier
        with zipfile.ZipFile(checkpoint, "w") as archive:
            archive.writestr("data", json.dumps(dict(num_timesteps=timesteps)))
        os.utime(checkpoint, (t_start + seconds, t_start + seconds))


def test_a_cut_run_resumes_from_its_last_checkpoint_and_reads_as_one(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo" / "ppo"
    # The first folder saved checkpoints at 100 and 200 timesteps (after 10 and 20 s) and was cut at 250.
    fake_zoo_folder(zoo / "CartPole-v1_1", 1000.0, "1.0,50,5.0\n2.0,100,15.0\n3.0,100,25.0\n", {100: 10.0, 200: 20.0})
    np.savez(zoo / "CartPole-v1_1" / "evaluations.npz", timesteps=np.array([100, 200]), results=np.array([[1.0], [2.0]]))
    # A second folder had resumed from 200 and was cut before its first checkpoint: it goes, and so does its record.
    fake_zoo_folder(zoo / "CartPole-v1_2", 2000.0, "9.0,10,1.0\n")
    (tmp_path / "resumed.json").write_text(json.dumps([dict(timesteps=200, seconds=20.0)]))
    checkpoint = sample_efficiency.prepare_resumption(tmp_path, "ppo", "CartPole-v1", 300)
    assert checkpoint == zoo / "CartPole-v1_1" / "rl_model_205_steps.zip"
    assert not (zoo / "CartPole-v1_2").exists()
    assert json.loads((tmp_path / "resumed.json").read_text()) == [dict(timesteps=200, seconds=20.0)]
    # A checkpoint at the budget or beyond cannot be resumed: the one before it is.
    checkpoint = sample_efficiency.prepare_resumption(tmp_path, "ppo", "CartPole-v1", 200)
    assert checkpoint is not None and checkpoint.name == "rl_model_105_steps.zip"
    assert json.loads((tmp_path / "resumed.json").read_text()) == [dict(timesteps=100, seconds=10.0)]

    sample_efficiency.prepare_resumption(tmp_path, "ppo", "CartPole-v1", 300)
    # The resumed folder: its clock and Monitor restart at 0, its evaluations count the model's timesteps.
    fake_zoo_folder(zoo / "CartPole-v1_10", 5000.0, "4.0,100,8.0\n5.0,100,16.0\n")
    np.savez(zoo / "CartPole-v1_10" / "evaluations.npz", timesteps=np.array([300, 400]), results=np.array([[4.0], [5.0]]))
    segments = sample_efficiency.run_segments(tmp_path, "ppo", "CartPole-v1")
    assert [segment.folder.name for segment in segments] == ["CartPole-v1_1", "CartPole-v1_10"]
    timesteps, returns = sample_efficiency.evaluations(segments)
    assert timesteps.tolist() == [100, 200, 300, 400] and returns.tolist() == [1.0, 2.0, 4.0, 5.0]
    # The episode that ended at 25 s, after the checkpoint of 20 s, is not part of the run.
    assert sample_efficiency.training_episodes(segments).tolist() == [
        [1.0, 50.0, 5.0], [2.0, 100.0, 15.0], [4.0, 100.0, 28.0], [5.0, 100.0, 36.0]
    ]  # fmt: skip
    assert sample_efficiency.wall_clock_at(segments, np.array([150, 300, 400])).tolist() == [15.0, 28.0, 36.0]
    assert sample_efficiency.first_reaching(sample_efficiency.training_return_records(segments, episodes=2), 4.5) == 400

    # Nothing to resume from: the run starts again.
    for checkpoint in zoo.glob("*/rl_model_*"):
        checkpoint.unlink()
    assert sample_efficiency.prepare_resumption(tmp_path, "ppo", "CartPole-v1", 300) is None
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "resumed.json").exists()


def test_training_speed_reads_the_logged_fps_and_the_benchmark_timesteps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert training_speed.timesteps_per_second("CartPole-v1", "acktr", 320, ["n_steps:10"]) > 0

    table = [dict(env="CartPole-v1", algo="acktr", steps_mean=900.0), dict(env="CartPole-v1", algo="a2c", steps_mean=None)]
    (tmp_path / "sample_efficiency.json").write_text(json.dumps(dict(table=table, curves={})))
    monkeypatch.setattr(training_speed, "RESULTS", tmp_path)
    assert training_speed.timesteps_to_threshold("CartPole-v1") == dict(acktr=900.0, a2c=None)
    # Other settings' runs replace ACKTR's figure: a finished run (done.json) that never reached the threshold.
    runs = tmp_path / "variant"
    folder = runs / "CartPole-v1" / "acktr" / "seed_0" / "zoo" / "acktr" / "CartPole-v1_1"
    folder.mkdir(parents=True)
    np.savez(folder / "evaluations.npz", timesteps=np.array([100, 200]), results=np.array([[10.0], [20.0]]))
    (folder / "0.monitor.csv").write_text('#{"t_start": 0}\nr,l,t\n10.0,100,1.0\n')
    (runs / "CartPole-v1" / "acktr" / "seed_0" / "done.json").write_text(json.dumps(dict(seconds=2.0, n_timesteps=200)))
    assert training_speed.timesteps_to_threshold("CartPole-v1", runs) == dict(acktr=None, a2c=None)


def test_training_speed_table_divides_timesteps_by_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    table = [dict(env="CartPole-v1", algo=algo, steps_mean=steps) for algo, steps in (("acktr", 900.0), ("ppo", 600.0))]
    table.append(dict(env="CartPole-v1", algo="a2c", steps_mean=None))
    (tmp_path / "sample_efficiency.json").write_text(json.dumps(dict(table=table, curves={})))
    monkeypatch.setattr(training_speed, "RESULTS", tmp_path)
    speeds = dict(acktr=[300.0, 500.0, 100.0], a2c=[200.0, 200.0, 200.0], ppo=[100.0, 100.0, 100.0])
    monkeypatch.setattr(training_speed, "timesteps_per_second", lambda env_id, algo, n, params: speeds[algo].pop(0))
    monkeypatch.setattr(sys, "argv", ["training_speed.py", "--env", "CartPole-v1", "--rounds", "3"])
    training_speed.main()
    rows = capsys.readouterr().out.splitlines()[-3:]
    # ACKTR: median speed 300, 900 timesteps -> 3 s against PPO's 600 / 100 = 6 s.
    assert rows == [
        "| acktr | 300 | 1.50 | 900 | 3 | 0.50 |",
        "| a2c | 200 | 1.00 | not reached | - | - |",
        "| ppo | 100 | 0.50 | 600 | 6 | 1.00 |",
    ]


@pytest.mark.parametrize("n_samples, n_params", [(12, 30), (30, 12)])
@pytest.mark.parametrize("damping", [0.0, 0.01])
def test_kernel_inner_equals_the_dense_fisher_solve(n_samples: int, n_params: int, damping: float) -> None:
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(n_samples, n_params, dtype=torch.float64, generator=generator)
    weights = torch.randn(n_samples, dtype=torch.float64, generator=generator)
    grad, fisher = jacobian.T @ weights, 4.0 * jacobian.T @ jacobian / n_samples
    dense = grad @ torch.linalg.pinv(fisher + damping * torch.eye(n_params, dtype=torch.float64)) @ grad
    assert critic_curvature._kernel_inner(weights, jacobian @ jacobian.T, 4.0, damping) == pytest.approx(dense.item())


def test_critic_curvature_rows_keep_their_ordering() -> None:
    (row,) = critic_curvature.probe("CartPole-v1", dict(n_steps=5, inverse_update_interval=1), updates=[4])
    n_layers = 3  # two hidden layers and the value head
    # The exact Fisher meets the bound when the residuals lie in the Jacobian's range: with 40 samples and ~4,500 critic
    # parameters they nearly do.
    assert 0.9 * row["bound"] <= row["exact"] <= row["bound"] * (1 + 1e-6)
    assert row["exact-damped"] < row["exact"] and row["block-damped"] < row["block"]
    # Not a theorem for any split into blocks; here each block alone has more parameters than samples (full-rank J).
    assert row["exact"] <= row["block"] <= n_layers * row["bound"] * (1 + 1e-6)
    # Inverses refreshed every update: the previous update's are those of the running factors as they are now, so the
    # script's own inversion must agree with the optimizer's (and the step refreshes them again first).
    assert row["previous"] == pytest.approx(row["running"], rel=1e-3)
    assert row["step_refreshes"]


def test_critic_curvature_rejects_an_update_without_statistics() -> None:
    with pytest.raises(ValueError, match="update 2 or later"):
        critic_curvature.probe("CartPole-v1", dict(), updates=[1, 3])


@pytest.mark.parametrize("level, expected", [(0.0, 1200), (2.5, 1600), (5.0, None)])
def test_training_return_records_read_the_running_mean(tmp_path: Path, level: float, expected: int | None) -> None:
    """Episode returns 1, 2, 3, 4 end at 10, 15, 20, 25 s (envs 0, 1, 0, 1); env 0 has taken 800 timesteps at 10 s."""
    (tmp_path / "0.monitor.csv").write_text('#{"t_start": 0}\nr,l,t\n1.0,400,10.0\n3.0,400,20.0\n')
    (tmp_path / "1.monitor.csv").write_text('#{"t_start": 0}\nr,l,t\n2.0,400,15.0\n4.0,400,25.0\n')
    # Running means over 2 episodes: 1.5 at 15 s, 2.5 at 20 s, 3.5 at 25 s.
    records = sample_efficiency.training_return_records(tmp_path, episodes=2)
    assert sample_efficiency.first_reaching(records, level) == expected
    # Each new high of the running mean, at env 0's step count when it ended (its clock stops at 20 s).
    assert records == [(1200, 1.5), (1600, 2.5), (1600, 3.5)]
    quarter = None if expected is None else expected // 4
    quarter_records = sample_efficiency.training_return_records(tmp_path, frame_skip=4, episodes=2)
    assert sample_efficiency.first_reaching(quarter_records, level) == quarter
    assert sample_efficiency.final_training_return(tmp_path, episodes=2) == 3.5


def test_training_return_records_keep_only_new_highs(tmp_path: Path) -> None:
    (tmp_path / "0.monitor.csv").write_text('#{"t_start": 0}\nr,l,t\n3.0,100,1.0\n1.0,100,2.0\n3.0,100,3.0\n5.0,100,4.0\n')
    records = sample_efficiency.training_return_records(tmp_path, episodes=1)
    assert records == [(100, 3.0), (400, 5.0)]
    assert [sample_efficiency.first_reaching(records, level) for level in (1.0, 3.0, 4.0, 6.0)] == [100, 100, 400, None]


def test_subset_statistics_compares_subset_and_whole_rollout_factors() -> None:
    callback = subset_statistics.run("mlp-8x20", subset_size=16, n_updates=4, report_at=[3, 4])
    layers = {row["layer"] for row in callback.rows}
    assert len(callback.rows) == 2 * len(layers) and "action_net" in layers
    for row in callback.rows:
        assert 0 < row["batch_a"] and 0 < row["averaged_a"] and 0 < row["batch_g"]
    whole = subset_statistics.run("mlp-8x20", subset_size=10_000, n_updates=3, report_at=[3])  # the subset is everything
    # The same examples (in another order for the averages: rounding only; G's Fisher samples are drawn anew).
    assert all(row["batch_a"] == 0 and row["averaged_a"] < 1e-5 for row in whole.rows)


def test_profile_update_phases_and_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    model = profile_update.model_with_rollout("acktr", "mlp-8x20", {})
    profile_update.phases(model, n_updates=2)
    assert "step: preconditioning" in capsys.readouterr().out
    # One for the statistics' finiteness, one for the trust-region sums, three losses logged (as A2C), the rest the
    # amortised inverse refresh (a float() and an isfinite per parameter and per factor would make it 44).
    assert profile_update.syncs(model, n_updates=10) <= 12


def test_distributed_cost_counts_the_bytes_of_gradient_and_factors() -> None:
    gradient, factors = distributed_cost.bytes_per_update("MlpPolicy", {})
    # CartPole's MlpPolicy: separate 64-64 actor and critic networks on 4 inputs, 2 logits and 1 value.
    layers = [(4, 64), (64, 64), (4, 64), (64, 64), (64, 2), (64, 1)]
    assert gradient == 4 * sum((inputs + 1) * outputs for inputs, outputs in layers)
    assert factors == 4 * sum((inputs + 1) ** 2 + outputs**2 for inputs, outputs in layers)
    assert distributed_cost.all_reduce_seconds(10**9, 2, 8.0) == pytest.approx(1.0)  # 1 GB through one link at 8 Gb/s


def test_save_size_reads_the_optimizer_state_in_the_zip(tmp_path: Path) -> None:
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8)
    model.learn(8 * 2)
    total, optimizer = save_size.saved_sizes(model, tmp_path)
    assert 0 < optimizer < total


@pytest.mark.parametrize("env_id", ["Blackjack-v1", "SimpleMultiObsEnv", "Reacher-v5"])
def test_unseen_tasks_panel_runs_each_kind_of_task_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_id: str
) -> None:
    """A tuple observation (as MultiDiscrete), a Dict one and a normalised MuJoCo task, each algorithm, one row each."""
    tiny = unseen_tasks.PANEL[env_id]._replace(budget=320, eval_freq=160, eval_episodes=2, final_episodes=3)
    monkeypatch.setitem(unseen_tasks.PANEL, env_id, tiny)
    path = tmp_path / "unseen.csv"
    for algo in ("acktr", "a2c"):
        unseen_tasks.append_row(unseen_tasks.train_one(env_id, algo, 0), path)
    unseen_tasks.append_row(unseen_tasks.train_one(env_id, "acktr", 0, "stats_update_interval=1"), path)
    rows = unseen_tasks.read_rows(path)
    assert [(row["algo"], row["params"]) for row in rows] == [("acktr", ""), ("a2c", ""), ("acktr", "stats_update_interval=1")]
    assert all(int(row["timesteps"]) >= 320 and math.isfinite(float(row["mean_return"])) for row in rows)
    table = unseen_tasks.report(path, tmp_path / "panel.png")
    assert table.splitlines()[0] == "| task (half, budget) | acktr | a2c | acktr[stats_update_interval=1] |"
    assert table.splitlines()[2].startswith(f"| {env_id} ({tiny.half}, 0k) | ")
    assert (tmp_path / "panel.png").stat().st_size > 0
    readme_rows = unseen_tasks.readme_table(path).splitlines()
    assert readme_rows[0] == "| task without a section (budget) | ACKTR | A2C | PPO | TRPO |"
    assert readme_rows[2].startswith(f"| {env_id} (0k) | ") and readme_rows[2].endswith(" | - | - |")


def test_unseen_tasks_panel_resumes_an_atari_run_from_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An Atari run cut after a checkpoint goes on from it, with the evaluations made before it and the evaluation schedule
    of an uncut run; a finished run leaves no checkpoint behind.
    """
    env_id = "AsterixNoFrameskip-v4"
    monkeypatch.setattr(unseen_tasks, "CHECKPOINT_FREQ", 640)
    task = unseen_tasks.PANEL[env_id]._replace(budget=960, eval_freq=320, eval_episodes=1, final_episodes=1)
    monkeypatch.setitem(unseen_tasks.PANEL, env_id, task)
    folder = tmp_path / env_id / "acktr" / "seed_0"
    with monkeypatch.context() as patch:
        save = unseen_tasks.Checkpoint._on_step
        patch.setattr(unseen_tasks.Checkpoint, "_on_step", lambda self: save(self) and not (folder / "latest").exists())
        unseen_tasks.train_one(env_id, "acktr", 0, checkpoints=tmp_path)  # cut right after its first checkpoint
    assert (folder / "latest").read_text() == "at_640" and [path.name for path in folder.glob("at_*")] == ["at_640"]
    progress = json.loads((folder / "at_640" / "progress.json").read_text())
    assert progress["timesteps"] == [320, 640] and progress["seconds"] > 0
    evaluations = []

    class RecordedEvalCallback(unseen_tasks.EvalCallback):
        def _init_callback(self) -> None:
            super()._init_callback()
            evaluations.append(self)

    monkeypatch.setattr(unseen_tasks, "EvalCallback", RecordedEvalCallback)
    row = unseen_tasks.train_one(env_id, "acktr", 0, checkpoints=tmp_path)
    # ACKTR resumes at the start of the rollout it saved (480): the evaluation at 640 is made again, then 960.
    assert row["timesteps"] == 960 and evaluations[0].evaluations_timesteps == [320, 640, 960]
    assert evaluations[0].evaluations_results[0] == progress["results"][0] and not folder.exists()


def test_unseen_tasks_panel_keeps_tasks_with_a_section_out() -> None:
    """No panel task has a section of its own (Atari games run ``CnnPolicy`` with the defaults, not the ``atari`` one)."""
    from sb3_acktr.zoo import hyperparameter_sections

    assert not set(unseen_tasks.PANEL) & set(hyperparameter_sections())
    halves = [task.half for task in unseen_tasks.PANEL.values()]
    assert halves.count("tuning") >= 4 and halves.count("held-out") >= 4
