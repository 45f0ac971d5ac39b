"""langrl: Gymnasium-style reinforcement learning for language-model reasoning.

``import langrl`` registers the reasoning environments (``Countdown-v0``, ``GSM8K-v0``) with
Gymnasium; ``gym.make("langrl:Countdown-v0")`` imports this module on its own.
"""

from langrl.envs import register_envs

register_envs()

__version__ = "0.1.0"
__all__ = ["register_envs", "__version__"]
