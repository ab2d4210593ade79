"""What the web UI's handlers use: the store, the models, the input rules, the model descriptions, and who the user is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from parley.knowledge.grounding import Embedder
from parley.store.accounts import Accounts, SignupPolicy
from parley.store.api_keys import ApiKeys
from parley.store.assistants import Assistants
from parley.store.conversations import Conversations
from parley.store.database import Database
from parley.store.knowledge import Knowledge
from parley.store.limits import Counters
from parley.store.usage import Usage, UsageRecorder
from parley.store.votes import Votes
from parley.web.live_replies import LiveReplies
from parley.web.model_client import ModelClient
from parley.web.model_descriptions import ModelDescriptions
from parley.web.reply_slots import ReplySlots
from parley.web.user_input import Limits, Moderator

DEFAULT_SCOPES = "openid profile email"


class OIDCSettings(BaseModel):
    """Sign-in through an OpenID Connect provider (a team's Keycloak, Google, Microsoft...): parley is a confidential
    client of `issuer` (its discovery document is ISSUER/.well-known/openid-configuration)."""

    issuer: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1, repr=False)
    name: str = "single sign-on"  # the sign-in button's label: "Sign in with <name>"
    scopes: str = DEFAULT_SCOPES


class WebSettings(BaseModel):
    controller_address: str = "http://127.0.0.1:21001"
    cluster_secret: str | None = None  # sent to the controller and workers
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    auth: bool = False
    battle_weights: dict[str, float] = {}
    model_info_file: Path | None = None
    moderation: str | None = None
    limits: Limits = Limits()
    leaderboard_file: Path | None = None  # default: DATA_HOME/arena_ratings/leaderboard.json
    mt_bench_judgments: Path | None = None  # default: DATA_HOME/mt_bench/model_judgment/gpt-4_single.jsonl
    leaderboard_interval_s: float = 0.0  # recompute from stored votes this often (0: on demand only)
    bootstrap_rounds: int = 200
    # Replies streamed at once by this web process (each side of a battle is one), and how many more may
    # wait for a turn before users are told it is busy. The default matches a worker's batch (32).
    max_concurrent_replies: int = Field(32, ge=1)
    max_waiting_replies: int = Field(64, ge=0)
    # The served model that embeds new knowledge collections (None: uploads are refused).
    embedding_model: str | None = "all-minilm-l6-v2"
    # Signs the web app's session cookies; None: derived from the cluster secret, or random per process.
    session_secret: str | None = None
    # With --auth: who may make an account (closed: only admins make them), and sign-in through OpenID Connect.
    signup: SignupPolicy = "closed"
    oidc: OIDCSettings | None = None
    session_hours: float = Field(14 * 24, gt=0)  # a sign-in lasts this long (then the user signs in again)
    # Sign-in attempts (right or wrong) allowed per username and per client address in each window; past them,
    # 429 until the window ends. Counted in the database, so every web process of a team shares them.
    login_attempts_per_name: int = Field(10, ge=1)
    login_attempts_per_address: int = Field(50, ge=1)
    login_window_s: int = Field(15 * 60, ge=1)


@dataclass
class WebServices:
    settings: WebSettings
    db: Database
    client: ModelClient
    model_info: ModelDescriptions
    moderator: Moderator | None
    accounts: Accounts = field(init=False)
    conversations: Conversations = field(init=False)
    votes: Votes = field(init=False)
    assistants: Assistants = field(init=False)
    knowledge: Knowledge = field(init=False)
    embedder: Embedder = field(init=False)
    reply_slots: ReplySlots = field(init=False)
    live: LiveReplies = field(init=False)  # the JSON API's replies being written
    keys: ApiKeys = field(init=False)
    counters: Counters = field(init=False)  # rate limits, budgets and sign-in attempts, shared with every process
    usage: Usage = field(init=False)  # the sums the usage pages show
    usage_recorder: UsageRecorder = field(init=False)  # writes each web reply's usage off the request path

    def __post_init__(self) -> None:
        self.accounts = Accounts(self.db)
        self.conversations = Conversations(self.db)
        self.votes = Votes(self.db)
        self.assistants = Assistants(self.db)
        self.knowledge = Knowledge(self.db)
        self.embedder = Embedder.of_cluster(self.client.cluster)
        self.reply_slots = ReplySlots(self.settings.max_concurrent_replies, self.settings.max_waiting_replies)
        self.live = LiveReplies()
        self.keys = ApiKeys(self.db)
        self.counters = Counters(self.db)
        self.usage = Usage(self.db)
        self.usage_recorder = UsageRecorder(self.db)
