"""The service client: blocking JSON-over-HTTP calls to a running ``modelhaul serve``, and the
errors it reports (``RemoteError`` with the service's category, ``ServiceUnreachable``).

Only the standard library speaks HTTP here, so the commands that steer a service need no extra.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from ..errors import Category, InvalidInput, ModelhaulError
from ..remedies import Remedy

DEFAULT_SERVER = "http://127.0.0.1:8765"
REQUEST_TIMEOUT_S = 30.0
FINAL_STATES = frozenset({"completed", "failed", "cancelled"})


class RemoteError(ModelhaulError):
    """An error the service reported, with the category it gave."""

    def __init__(self, message: str, *, category: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        try:
            self._category = Category(category)
        except ValueError:  # a newer service's category: the nearest this client knows
            self._category = Category.CLIENT_ERROR

    @property  # type: ignore[override]
    def category(self) -> Category:
        return self._category


class ServiceUnreachable(ModelhaulError):
    """Nothing answers at the service's address, or the event stream dropped."""

    category = Category.NETWORK
    default_remedy = Remedy.START_SERVICE


class TokenRefused(ModelhaulError):
    """The service wants its access token (HTTP 401): none was sent, or the wrong one."""

    category = Category.AUTH
    default_remedy = Remedy.SERVICE_TOKEN


class ServiceClient:
    """Blocking JSON-over-HTTP calls to one service (run them in a thread from async code)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def _request(self, method: str, path: str, body: Any = None) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; the decoded JSON answer (None for 204).

        Raises:
            ServiceUnreachable: nothing answers at the address.
            RemoteError: the service refused (its category, message and hint).
        """
        try:
            with urllib.request.urlopen(
                self._request(method, path, body), timeout=REQUEST_TIMEOUT_S
            ) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self.unreachable(exc) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise self.not_ours() from None

    def open_events(self) -> http.client.HTTPResponse:
        """The live event stream (Server-Sent Events), open; read it with ``iter_events``."""
        req = self._request("GET", "/events")
        req.add_header("Accept", "text/event-stream")
        try:
            return urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, exc: BaseException) -> ServiceUnreachable:
        """The error for ``exc`` raised while connecting or reading: nothing answers here."""
        reason = getattr(exc, "reason", exc)
        detail = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return ServiceUnreachable(f"no modelhaul service is running at {self.base_url} ({detail})")

    def not_ours(self) -> ModelhaulError:
        """The error for an answer no modelhaul service would give."""
        return ModelhaulError(
            f"the server at {self.base_url} is not a modelhaul service",
            remedy=Remedy.CHECK_SERVICE,
        )

    def _refusal(self, exc: urllib.error.HTTPError) -> ModelhaulError:
        try:
            data = json.loads(exc.read() or b"null")
        except (ValueError, OSError):
            data = None
        if exc.code == 401:
            return TokenRefused(f"the service at {self.base_url} needs its access token")
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            err = data["error"]
            category = str(err.get("category") or Category.CLIENT_ERROR)
            message = str(err.get("message") or f"HTTP {exc.code}")
            hint = err.get("hint")
            if category == Category.INVALID_INPUT:
                return InvalidInput(message, hint=hint or None)
            return RemoteError(message, category=category, hint=hint or None)
        if isinstance(data, dict) and isinstance(data.get("detail"), list):
            first = data["detail"][0] if data["detail"] else {}
            where = ".".join(str(p) for p in first.get("loc", ())[1:])
            return InvalidInput(f"the service refused the request: {where}: {first.get('msg')}")
        if exc.code == 404:
            return self.not_ours()
        return RemoteError(f"HTTP {exc.code} from {self.base_url}", category=Category.SERVER_ERROR)
