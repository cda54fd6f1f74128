"""Scenarios as data: YAML files of faults, waits and asserts, collected as pytest items."""

from __future__ import annotations

from .runner import Fault, ScenarioFailed, draw_schedule
from .schema import Scenario, ScenarioError, is_scenario, load_scenario, looks_like_scenario

__all__ = [
    "Fault",
    "Scenario",
    "ScenarioError",
    "ScenarioFailed",
    "draw_schedule",
    "is_scenario",
    "load_scenario",
    "looks_like_scenario",
]
