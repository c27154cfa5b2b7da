"""Malformed multipart bodies: every one gets a 4xx with a message, none leaves a file behind."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Api, Server, stored_files

FORM = "multipart/form-data; boundary=b"


def part(headers: str, data: bytes = b"data") -> bytes:
    return b"--b\r\n" + headers.encode("latin-1") + b"\r\n\r\n" + data + b"\r\n"


FILE_PART = part('Content-Disposition: form-data; name="file"; filename="a.txt"')
END = b"--b--\r\n"

# (case, Content-Type, body, expected status)
MALFORMED: list[tuple[str, str | None, bytes, int]] = [
    ("no content type", None, FILE_PART + END, 400),
    ("not multipart", "text/plain", FILE_PART + END, 400),
    ("urlencoded form", "application/x-www-form-urlencoded", b"file=a", 400),
    ("no boundary", "multipart/form-data", FILE_PART + END, 400),
    ("empty boundary", "multipart/form-data; boundary=", FILE_PART + END, 400),
    ("boundary over 70 characters", "multipart/form-data; boundary=" + "b" * 71, FILE_PART + END, 400),
    ("other boundary in body", "multipart/form-data; boundary=zzz", FILE_PART + END, 400),
    ("empty body", FORM, b"", 400),
    ("garbage body", FORM, b"this is not a multipart body at all", 400),
    ("closing boundary only", FORM, END, 400),
    ("ends mid-part", FORM, FILE_PART[:-10], 400),
    ("ends mid-headers", FORM, b'--b\r\nContent-Disposition: form-data; name="fi', 400),
    ("ends after headers", FORM, b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n', 400),
    ("no closing boundary", FORM, FILE_PART, 400),
    ("header without colon", FORM, part("this header has no colon") + END, 400),
    ("no content-disposition", FORM, part("Content-Type: text/plain") + END, 400),
    ("file part without filename", FORM, part('Content-Disposition: form-data; name="file"') + END, 400),
    ("only other fields", FORM, part('Content-Disposition: form-data; name="note"') + END, 400),
    ("duplicate other fields", FORM,
     part('Content-Disposition: form-data; name="note"') * 2 + END, 400),
    ("file without filename after a good file", FORM,
     FILE_PART + part('Content-Disposition: form-data; name="file"') + END, 400),
    ("no dashes before boundary", FORM, FILE_PART[2:] + END, 400),
    ("part without a field name", FORM, part('Content-Disposition: form-data; filename="a.txt"') + END, 400),
    ("thousands of parts", FORM, part('Content-Disposition: form-data; name="x"', b"") * 3000 + END, 413),
    ("huge part header", FORM,
     part('Content-Disposition: form-data; name="file"; filename="a"\r\nX-Pad: ' + "p" * 400_000) + END, 413),
    # The value of a field other than "file" is dropped as it streams, so its size is harmless.
    ("huge text field", FORM, part('Content-Disposition: form-data; name="note"', b"n" * 400_000) + END, 400),
    ("huge preamble", FORM, b"p" * 2_000_000 + FILE_PART + END, 413),
]


@pytest.mark.parametrize(("case", "content_type", "body", "status"), MALFORMED, ids=[row[0] for row in MALFORMED])
def test_malformed_multipart_rejected(api: Api, server: Server, case: str, content_type: str | None, body: bytes,
                                      status: int) -> None:
    before = stored_files(server)
    headers = {"Content-Type": content_type} if content_type is not None else {}
    response = api.client.post(f"{api.prefix}/files", content=body, headers=headers)

    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
    assert stored_files(server) == before
    assert api.client.get(f"{api.prefix}/files").json()["files"] == []


def test_server_healthy_after_malformed_table(api: Api) -> None:
    for _, content_type, body, _ in MALFORMED:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        api.client.post(f"{api.prefix}/files", content=body, headers=headers)

    assert api.client.get("/readyz").status_code == 200
    response = api.client.post(f"{api.prefix}/files", content=FILE_PART + END, headers={"Content-Type": FORM})
    assert response.status_code == 201, response.text
    assert response.json()["files"][0]["name"] == "a.txt"


def test_duplicate_file_fields_store_each(api: Api) -> None:
    body = FILE_PART + part('Content-Disposition: form-data; name="file"; filename="b.txt"', b"second") + END
    response = api.client.post(f"{api.prefix}/files", content=body, headers={"Content-Type": FORM})
    assert response.status_code == 201, response.text
    assert [item["name"] for item in response.json()["files"]] == ["a.txt", "b.txt"]


def test_lf_line_endings_accepted(api: Api) -> None:
    body = FILE_PART.replace(b"\r\n", b"\n") + END.replace(b"\r\n", b"\n")
    response = api.client.post(f"{api.prefix}/files", content=body, headers={"Content-Type": FORM})
    assert response.status_code == 201, response.text


def test_quoted_boundary_accepted(api: Api) -> None:
    response = api.client.post(f"{api.prefix}/files", content=FILE_PART + END,
                                headers={"Content-Type": 'multipart/form-data; boundary="b"'})
    assert response.status_code == 201, response.text


VALID = FILE_PART + part('Content-Disposition: form-data; name="note"', b"hello") + END


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """Return the valid body with random cuts, insertions and byte changes."""
    body = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["cut", "insert", "flip", "truncate"]))
        if action == "cut":
            del body[position:position + draw(st.integers(1, 20))]
        elif action == "insert":
            body[position:position] = draw(st.binary(min_size=1, max_size=20))
        elif action == "flip" and position < len(body):
            body[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del body[position:]
    return bytes(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=mutated_bodies())
def test_fuzzed_multipart_never_5xx(api: Api, server: Server, body: bytes) -> None:
    response = api.client.post(f"{api.prefix}/files", content=body, headers={"Content-Type": FORM})
    assert response.status_code in {201, 400, 413}, response.text
    for record in response.json().get("files", []):
        assert api.client.delete(f"{api.prefix}/files/{record['file_id']}").status_code == 204
    assert not [path for path in stored_files(server) if path.name.endswith(".part")]
