"""Train ACKTR on CartPole-v1 with a progress bar, save it, reload it and print its evaluation return."""

import argparse

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_acktr import ACKTR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-path", default="acktr_cartpole")
    args = parser.parse_args()

    # The tuned CartPole-v1 settings of hyperparams/acktr.yml.
    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed)
    model = ACKTR("MlpPolicy", env, ent_coef=0.0, seed=args.seed, verbose=0)
    model.learn(total_timesteps=args.timesteps, progress_bar=True)
    model.save(args.save_path)

    loaded = ACKTR.load(args.save_path)
    mean_return, std_return = evaluate_policy(loaded, make_vec_env("CartPole-v1", n_envs=1, seed=args.seed + 1000), 20)
    print(f"Saved to {args.save_path}.zip; evaluation return over 20 episodes: {mean_return:.1f} +/- {std_return:.1f}")


if __name__ == "__main__":
    main()
