"""The test OpenID provider (tests/oidc_provider, panva's oidc-provider) with Authlib's client, without parley: the
authorization-code flow end to end, and the ID token checked the way Authlib's OIDC clients check it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.oidc import login_with_httpx, start_oidc_provider
from tests.servers import free_port

authlib_httpx = pytest.importorskip("authlib.integrations.httpx_client", reason="Authlib is not installed")
from authlib.common.security import generate_token  # noqa: E402
from authlib.oidc.core import CodeIDToken  # noqa: E402
from joserfc import jwt  # noqa: E402  (Authlib's own OIDC clients verify ID tokens with joserfc)
from joserfc.jwk import KeySet  # noqa: E402
from joserfc.jws import JWSRegistry  # noqa: E402


def _id_token_claims(meta: dict, token: dict, client_id: str, nonce: str) -> dict:
    """As Authlib's OpenIDMixin.parse_id_token: signature against the JWKS, then iss, aud, nonce, at_hash, exp."""
    jwks = KeySet.import_key_set(httpx.get(meta["jwks_uri"]).raise_for_status().json())
    decoded = jwt.decode(token["id_token"], key=jwks,
                         registry=JWSRegistry(algorithms=meta["id_token_signing_alg_values_supported"],
                                              strict_check_header=False))
    claims = CodeIDToken(decoded.claims, decoded.header, {"iss": {"values": [meta["issuer"]]}},
                         {"nonce": nonce, "client_id": client_id, "access_token": token["access_token"]})
    claims.validate(leeway=120)
    return dict(claims)


def test_authorization_code_flow_with_authlib():
    redirect_uri = f"http://127.0.0.1:{free_port()}/api/oidc/callback"  # nothing listens: the code is read off it
    with start_oidc_provider([redirect_uri, "http://127.0.0.1:1/other"], client_id="parley",
                             client_secret="s3cret") as idp:
        meta = idp.metadata()
        assert meta["issuer"] == idp.issuer

        def one_flow(browser: httpx.Client, auth_method: str, pkce: bool) -> tuple[dict, httpx.Response]:
            with authlib_httpx.OAuth2Client(idp.client_id, idp.client_secret, scope="openid profile email",
                                            redirect_uri=redirect_uri, token_endpoint_auth_method=auth_method,
                                            code_challenge_method="S256" if pkce else None) as rp:
                nonce, verifier = generate_token(20), generate_token(48)
                url, state = rp.create_authorization_url(meta["authorization_endpoint"], nonce=nonce,
                                                         **({"code_verifier": verifier} if pkce else {}))
                redirect = login_with_httpx(browser, url, "alice", fetch_callback=False)
                assert redirect.is_redirect, redirect.text
                location = redirect.headers["location"]
                assert location.startswith(redirect_uri + "?")
                query = parse_qs(urlsplit(location).query)
                assert query["state"] == [state] and query["iss"] == [idp.issuer] and "code" in query
                token = rp.fetch_token(meta["token_endpoint"], authorization_response=location,
                                       **({"code_verifier": verifier} if pkce else {}))
                claims = _id_token_claims(meta, token, idp.client_id, nonce)
                userinfo = rp.get(meta["userinfo_endpoint"]).raise_for_status().json()
                return claims, userinfo

        with httpx.Client(timeout=10) as browser:
            # First: Authlib's defaults (client_secret_basic) with PKCE: login form, consent page, callback.
            claims, userinfo = one_flow(browser, "client_secret_basic", pkce=True)
            expected = {"sub": "alice", "preferred_username": "alice", "email": "alice@example.test",
                        "email_verified": True}
            assert expected.items() <= claims.items(), claims
            assert claims["name"] and claims["aud"] == "parley"
            assert expected.items() <= userinfo.items(), userinfo
            # Again in the same browser: the provider's session and grant skip both pages; client_secret_post,
            # no PKCE.
            claims, _ = one_flow(browser, "client_secret_post", pkce=False)
            assert claims["preferred_username"] == "alice"

        # A wrong secret is refused at the token endpoint.
        with httpx.Client(timeout=10) as browser, authlib_httpx.OAuth2Client(
                idp.client_id, "wrong", scope="openid", redirect_uri=redirect_uri) as rp:
            url, _ = rp.create_authorization_url(meta["authorization_endpoint"], nonce="n")
            location = login_with_httpx(browser, url, "bob", fetch_callback=False).headers["location"]
            with pytest.raises(Exception, match="invalid_client"):
                rp.fetch_token(meta["token_endpoint"], authorization_response=location)
    assert idp.proc.returncode == 0, idp.log()
