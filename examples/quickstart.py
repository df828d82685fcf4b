"""Train ACKTR on CartPole-v1 with a progress bar, save it, reload it and print its evaluation return."""

import argparse
from pathlib import Path

from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_acktr import ACKTR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default="acktr_cartpole")
    args = parser.parse_args()
    save_dir = Path(args.save_dir)

    # The CartPole-v1 section of hyperparams/acktr.yml; the best model of periodic evaluations is kept too.
    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed)
    model = ACKTR(
        "MlpPolicy",
        env,
        learning_rate=lambda progress_remaining: 0.25 * progress_remaining,
        kl_clip=lambda progress_remaining: 0.003 * progress_remaining,
        vf_kl_clip=0.03,
        n_critic_updates=3,
        n_steps=10,
        momentum=0.5,
        ent_coef=0.0,
        stats_decay=0.9975,
        seed=args.seed,
        verbose=0,
    )
    evaluations = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1, seed=args.seed + 1000),
        eval_freq=5_000 // env.num_envs,
        n_eval_episodes=10,
        best_model_save_path=str(save_dir),
        verbose=0,
    )
    model.learn(total_timesteps=args.timesteps, callback=evaluations, progress_bar=True)
    model.save(save_dir / "final_model")

    test_env = make_vec_env("CartPole-v1", n_envs=1, seed=args.seed + 2000)
    for name in ("final_model", "best_model"):
        loaded = ACKTR.load(save_dir / name)
        mean_return, std_return = evaluate_policy(loaded, test_env, n_eval_episodes=20)
        print(f"{save_dir / name}.zip: evaluation return over 20 new episodes {mean_return:.1f} +/- {std_return:.1f}")


if __name__ == "__main__":
    main()
