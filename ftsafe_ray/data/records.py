"""Plain frozen record types for chat training data and evaluation benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One chat turn: a role (system/user/assistant) and its text."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        """Return the message as a JSON-ready dict."""
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        """Build a message from a ``{"role", "content"}`` dict."""
        return cls(role=str(data["role"]), content=str(data["content"]))


@dataclass(frozen=True)
class ChatExample:
    """One fine-tuning example: an ordered tuple of chat messages."""

    messages: tuple[Message, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the example as a JSON-ready ``{"messages": [...]}`` dict."""
        return {"messages": [m.to_dict() for m in self.messages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatExample:
        """Build an example from a ``{"messages": [...]}`` dict."""
        return cls(messages=tuple(Message.from_dict(m) for m in data["messages"]))

    @property
    def system(self) -> str | None:
        """Return the system prompt text, if the example has one."""
        for m in self.messages:
            if m.role == "system":
                return m.content
        return None

    @property
    def last_assistant(self) -> str | None:
        """Return the content of the final assistant message, if any."""
        for m in reversed(self.messages):
            if m.role == "assistant":
                return m.content
        return None

    def user_texts(self) -> tuple[str, ...]:
        """Return the contents of all user messages in order."""
        return tuple(m.content for m in self.messages if m.role == "user")


@dataclass(frozen=True)
class BenchmarkItem:
    """One evaluation prompt with a stable id and a category slug."""

    item_id: str
    category: str
    prompt: str
    # A utility benchmark's reference answer, shown to the utility rubric when given.
    reference: str | None = None

    def to_dict(self) -> dict[str, str]:
        """Return the item as a JSON-ready ``{"id", "category", "prompt"}`` dict (and
        ``reference`` when it has one)."""
        item = {"id": self.item_id, "category": self.category, "prompt": self.prompt}
        return item if self.reference is None else {**item, "reference": self.reference}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkItem:
        """Build an item from a dict with ``id`` (or ``item_id``), ``category``, ``prompt``."""
        item_id = data["id"] if "id" in data else data["item_id"]
        reference = data.get("reference")
        return cls(
            item_id=str(item_id),
            category=str(data["category"]),
            prompt=str(data["prompt"]),
            reference=None if reference is None else str(reference),
        )
