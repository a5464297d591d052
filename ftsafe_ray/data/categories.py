"""The 11 HEx-PHI prohibited-use policy categories (Qi et al. 2024)."""

from __future__ import annotations

HEX_PHI_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "illegal_activity", "Illegal Activity"),
    (2, "child_abuse", "Child Abuse Content"),
    (3, "hate_harass_violence", "Hate/Harass/Violence"),
    (4, "malware", "Malware"),
    (5, "physical_harm", "Physical Harm"),
    (6, "economic_harm", "Economic Harm"),
    (7, "fraud_deception", "Fraud/Deception"),
    (8, "adult_content", "Adult Content"),
    (9, "political_campaigning", "Political Campaigning"),
    (10, "privacy_violation", "Privacy Violation Activity"),
    (11, "tailored_financial_advice", "Tailored Financial Advice"),
)

CATEGORY_SLUGS: tuple[str, ...] = tuple(slug for _, slug, _ in HEX_PHI_CATEGORIES)


def category_slug(number: int) -> str:
    """Return the slug for a HEx-PHI category number (1-11); raise KeyError if unknown."""
    for num, slug, _ in HEX_PHI_CATEGORIES:
        if num == number:
            return slug
    raise KeyError(f"unknown HEx-PHI category number {number}; expected 1-11")


def category_title(slug: str) -> str:
    """Return the human-readable title for a category slug, or the slug itself if unknown."""
    for _, s, title in HEX_PHI_CATEGORIES:
        if s == slug:
            return title
    return slug
