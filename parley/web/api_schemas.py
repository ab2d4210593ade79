"""The web app's JSON API: what each request carries and each answer holds (closed schemas)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from parley.store.accounts import SignupPolicy, Status, UserView
from parley.store.api_keys import KeySpec
from parley.store.conversations import (
    ConversationSummary,
    ConversationView,
    MessageView,
)
from parley.store.limits import Limits, Used
from parley.web.model_client import ReplyParams


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OIDCInfo(Closed):
    name: str  # the sign-in button's label ("Sign in with <name>"); the button links to GET /api/oidc/login


class SessionInfo(Closed):
    signed_in: bool
    username: str | None = None
    user_id: int | None = None
    is_admin: bool = False
    auth: bool  # whether this server asks for a login (`parley web --auth`)
    csrf_token: str  # send it back as the X-CSRF-Token header with every request that changes something
    signup: SignupPolicy = "closed"  # whether the sign-in page offers to make an account (and if it needs approval)
    oidc: OIDCInfo | None = None  # None: no sign-in through an OpenID Connect provider


class LoginRequest(Closed):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SignupRequest(Closed):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SignupResult(Closed):
    status: Literal["active", "pending"]  # pending: an admin approves the account before it can sign in
    session: SessionInfo  # signed in when active


class AccountView(UserView):
    """The signed-in user, with what their limits have counted so far."""

    used: Used


class PasswordChange(Closed):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class NewKeyRequest(KeySpec):
    """POST /api/account/keys: a KeySpec (name, limits, models), nothing else."""

    model_config = ConfigDict(extra="forbid")


class NewUser(Closed):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    is_admin: bool = False


class UserChange(Closed):
    """An admin's change to an account; the fields left out stay as they are."""

    status: Status | None = None  # active approves a pending account (or enables a disabled one)
    is_admin: bool | None = None
    limits: Limits | None = None  # replaces all of them: {} removes every limit


class PasswordReset(Closed):
    password: str = Field(min_length=1, max_length=1024)


class ModelEntry(Closed):
    name: str
    description: str | None = None
    link: str | None = None


class AssistantEntry(Closed):
    """An assistant in the model picker: what to show, and the parameters a new chat with it starts from."""

    id: str
    name: str
    description: str
    base_model: str
    starters: list[str]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    knowledge: list[str] = []  # its collections' names
    available: bool  # whether its base model is served now


class ModelList(Closed):
    models: list[ModelEntry]
    reachable: bool  # False: the controller could not be asked (the list is empty for that reason)
    assistants: list[AssistantEntry] = []


class ConversationList(Closed):
    conversations: list[ConversationSummary]


class NewConversation(Closed):
    model: str | None = Field(None, max_length=200)
    system_prompt: str | None = Field(None, max_length=32_000)
    title: str | None = Field(None, max_length=200)


class ConversationChange(Closed):
    title: str | None = Field(None, max_length=200)
    system_prompt: str | None = Field(None, max_length=32_000)  # "" removes it
    model: str | None = Field(None, max_length=200)


class SendMessage(Closed):
    content: str = Field(max_length=1_000_000)  # the server's --max-input-chars is the limit users meet
    model: str = Field(min_length=1, max_length=200)
    parameters: ReplyParams = ReplyParams()


class EditMessage(SendMessage):
    """Edit-and-resend: the question edited becomes a new version beside the old one, answered anew."""


class SwitchVersion(Closed):
    message_id: int  # a message of this conversation: its branch is shown from now on


class ReplyOptions(Closed):
    """Regenerate and Continue: which model writes, with which parameters."""
    model: str = Field(min_length=1, max_length=200)
    parameters: ReplyParams = ReplyParams()


class ReplyStarted(Closed):
    """The first event of a reply's stream: what was stored for it."""
    conversation: ConversationSummary
    user_message: MessageView | None  # None: a regenerate
    reply: MessageView


class ReplyText(Closed):
    """What the reply gained since the last event: its answer's text, and a reasoning model's thinking (the
    reasoning comes first; either may be empty)."""
    text: str
    reasoning: str = ""


class ReplyEnded(Closed):
    reply: MessageView  # as stored: finish_reason stop | length | stopped | error (with `error`)


class FeedbackIn(Closed):
    kind: Literal["upvote", "downvote", "flag"]
    comment: str | None = Field(None, max_length=4000)


class FeedbackSaved(Closed):
    id: int


class NewBattle(Closed):
    models: list[str] | None = Field(None, min_length=2, max_length=4)  # None: an anonymous battle of two


class ArenaMessage(Closed):
    content: str = Field(max_length=1_000_000)
    parameters: ReplyParams = ReplyParams()


class BattleVote(Closed):
    kind: Literal["model_a", "model_b", "tie", "tie (bothbad)"]


class BattleSide(Closed):
    label: str  # A, B, C, D
    model: str | None  # None in an anonymous battle until the vote
    conversation_id: str
    messages: list[MessageView]


class BattleView(Closed):
    id: str
    anonymous: bool
    vote: str | None  # the user's vote, once given
    why_no_vote: str | None  # None: the round can be voted on now
    sides: list[BattleSide]


class SideEvent(Closed):
    """An Arena reply's event: which side, and the event as a chat reply's stream has it."""
    side: int
    data: ReplyStarted | ReplyText | ReplyEnded


class TurnEnded(Closed):
    can_vote: bool
    why_no_vote: str | None


class LeaderboardRow(Closed):
    rank: int | None  # None: a model with MT-bench scores only
    model: str
    rating: float | None  # None: the votes do not pin it down yet (provisional), or MT-bench only
    lower: float | None
    upper: float | None
    votes: int
    mt_bench: float | None


class MTBenchCategories(Closed):
    categories: list[str]
    scores: dict[str, dict[str, float]]  # model -> category -> mean score (1-10)


class LeaderboardView(Closed):
    status: str  # what the ratings are, or why there are none
    rows: list[LeaderboardRow]
    not_counted: dict[str, int]  # votes left out of the ratings, by reason (e.g. "identity revealed")
    mt_bench: MTBenchCategories | None
    can_recompute: bool  # an admin, who may recompute from the stored votes
    vote_stats: dict | None = None  # for admins: votes by kind and model, feedback, users voting


class Stopped(Closed):
    stopped: bool  # False: no reply was being written


ExportFormat = Literal["json", "markdown"]

__all__ = ["AccountView", "NewKeyRequest", "NewUser", "OIDCInfo", "PasswordChange", "PasswordReset",
           "SignupRequest", "SignupResult", "UserChange", "ArenaMessage", "BattleSide", "BattleView", "BattleVote", "ConversationChange", "ConversationList",
           "ConversationView", "EditMessage", "ExportFormat", "FeedbackIn", "FeedbackSaved", "LeaderboardRow", "LeaderboardView", "LoginRequest", "MTBenchCategories", "AssistantEntry", "ModelEntry", "ModelList", "NewBattle",
           "NewConversation", "ReplyEnded", "ReplyOptions", "ReplyStarted", "ReplyText", "SendMessage", "SessionInfo",
           "SideEvent", "Stopped", "SwitchVersion", "TurnEnded"]
