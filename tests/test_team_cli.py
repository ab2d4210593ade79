"""`parley keys`, `parley usage` and `parley users`, run as a user would, against one database."""

from __future__ import annotations

import csv
import io

from parley.store.accounts import Accounts
from parley.store.api_keys import ApiKeys
from parley.store.database import Database
from parley.store.usage import Usage, UsageEvent
from tests.conftest import run_parley


def test_keys_users_and_usage_from_the_command_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'parley.db'}"
    env = {"PARLEY_DB_URL": url}
    assert run_parley("db", "create-user", "nora", "--password-stdin", stdin="a good password\n", env=env).returncode == 0

    made = run_parley("keys", "create", "--user", "nora", "--name", "ci", "--rpm", "5", "--models", "m1,m2", env=env)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("sk-parley-") and "5 requests/min" in made.stderr
    db = Database(url)
    grant = ApiKeys(db).grant(secret)
    assert grant.username == "nora" and grant.key_limits.rpm == 5 and grant.models == {"m1", "m2"}
    listed = run_parley("keys", "list", "--user", "nora", env=env)
    assert grant.key_id[:8] in listed.stdout and secret not in listed.stdout

    refused = run_parley("keys", "create", "--user", "nobody", "--name", "x", env=env)
    assert refused.returncode != 0 and "no user 'nobody'" in refused.stderr
    assert run_parley("keys", "revoke", grant.key_id, env=env).returncode == 0
    assert ApiKeys(db).grant(secret) is None

    assert run_parley("users", "limits", "nora", "--tpm", "1000", "--budget", "50000", "--period", "day",
                      env=env).returncode == 0
    nora = Accounts(db).get("nora")
    assert (nora.tpm, nora.token_budget, nora.budget_period, nora.rpm) == (1000, 50000, "day", None)
    assert run_parley("users", "disable", "nora", env=env).returncode == 0
    assert Accounts(db).get("nora").status == "disabled"
    assert run_parley("users", "password", "nora", "--password-stdin", stdin="another password\n",
                      env=env).returncode == 0
    assert Accounts(db).authenticate("nora", "another password") is not None

    Usage(db).write([UsageEvent("api", "/v1/chat/completions", "m1", 200, 12.0, 10, 20, nora.id, grant.key_id),
                     UsageEvent("web", "web", "m2", 200, 30.0, 5, 6, nora.id)])
    table = run_parley("usage", "--by", "user,model", env=env)
    assert table.returncode == 0 and "nora" in table.stdout and "30" in table.stdout
    rows = list(csv.DictReader(io.StringIO(run_parley("usage", "--by", "model", "--csv", env=env).stdout)))
    assert {(r["model"], r["total_tokens"]) for r in rows} == {("m1", "30"), ("m2", "11")}
    bad = run_parley("usage", "--by", "colour", env=env)
    assert bad.returncode != 0 and "grouped by user, key, model, day; not by colour" in bad.stderr
