import io

import pytest

from vdsm_imageio.http import cors
from vdsm_imageio.http.message import Request, read_head


def request(method: str, **headers: str) -> Request:
    lines = [f"{method} /images/t HTTP/1.1", "Host: x"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    req = read_head(io.BufferedReader(io.BytesIO(raw)), 4096)
    assert req is not None
    return req


@pytest.mark.parametrize(
    "method, headers, preflight",
    [
        ("OPTIONS", {"Origin": "http://a", "Access_Control_Request_Method": "PUT"}, True),
        ("OPTIONS", {"Origin": "http://a"}, False),
        ("OPTIONS", {"Access_Control_Request_Method": "PUT"}, False),
        ("PUT", {"Origin": "http://a", "Access_Control_Request_Method": "PUT"}, False),
    ],
)
def test_only_options_with_origin_and_request_method_is_a_preflight(
    method: str, headers: dict[str, str], preflight: bool
) -> None:
    assert cors.is_preflight(request(method, **headers)) is preflight


def test_no_headers_without_origin() -> None:
    assert cors.headers(request("GET")) == {}
    assert cors.headers(None) == {}


def test_any_response_with_origin_exposes_headers_and_max_age() -> None:
    out = cors.headers(request("PUT", Origin="http://a"))
    assert out["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip() for h in out["Access-Control-Expose-Headers"].split(",")}
    assert exposed == {"Content-Range", "Content-Length", "Allow", "Range"}
    assert out["Access-Control-Max-Age"] == cors.MAX_AGE
    assert "Access-Control-Allow-Methods" not in out


def test_preflight_is_told_methods_and_headers() -> None:
    out = cors.headers(request("OPTIONS", Origin="http://a", Access_Control_Request_Method="PUT"))
    assert "PUT" in out["Access-Control-Allow-Methods"]
    assert out["Access-Control-Allow-Headers"] == "*"
    assert out["Access-Control-Max-Age"] == cors.MAX_AGE
