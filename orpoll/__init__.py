"""orpoll: an OpenAI-compatible proxy that pools many OpenRouter API keys."""

__version__ = "0.1.0"
