"""Agent jobs and their dispatch to agent workers: the book of jobs (jobs.py) and the
dispatcher that hands them to workers (dispatcher.py); the routes are in sfu/api/agents.py."""

from .dispatcher import AGENTS_KEY, AgentDispatcher, WorkerLink
from .jobs import DEFAULT_KIND, AgentJob, JobBook, is_agent_participant

__all__ = [
    "AGENTS_KEY",
    "DEFAULT_KIND",
    "AgentDispatcher",
    "AgentJob",
    "JobBook",
    "WorkerLink",
    "is_agent_participant",
]
