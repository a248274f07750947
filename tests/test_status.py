"""Status words: ISO 7816-4 values, families with counts, CardError."""

from __future__ import annotations

import pytest

from apdu.status import SW, CardError, describe

ISO_VALUES: dict[str, int] = {
    "OK": 0x9000,
    "BYTES_REMAINING": 0x6100,
    "WRONG_LE": 0x6C00,
    "VERIFY_FAILED": 0x63C0,
    "MEMORY_FAILURE": 0x6581,
    "WRONG_LENGTH": 0x6700,
    "SECURITY_STATUS_NOT_SATISFIED": 0x6982,
    "AUTH_METHOD_BLOCKED": 0x6983,
    "REFERENCE_DATA_NOT_USABLE": 0x6984,
    "CONDITIONS_NOT_SATISFIED": 0x6985,
    "COMMAND_NOT_ALLOWED": 0x6986,
    "WRONG_DATA": 0x6A80,
    "FUNCTION_NOT_SUPPORTED": 0x6A81,
    "FILE_NOT_FOUND": 0x6A82,
    "RECORD_NOT_FOUND": 0x6A83,
    "NOT_ENOUGH_MEMORY": 0x6A84,
    "INCORRECT_P1P2": 0x6A86,
    "REFERENCED_DATA_NOT_FOUND": 0x6A88,
    "WRONG_P1P2": 0x6B00,
    "INS_NOT_SUPPORTED": 0x6D00,
    "CLA_NOT_SUPPORTED": 0x6E00,
    "UNKNOWN_ERROR": 0x6F00,
}


@pytest.mark.parametrize(("name", "value"), sorted(ISO_VALUES.items()))
def test_member_value_is_iso(name: str, value: int) -> None:
    assert SW[name] == value
    assert SW(value).name == name


def test_members_are_distinct_and_cover_iso() -> None:
    # other (proprietary) members may be added; the ISO ones must all be there
    assert set(ISO_VALUES) <= {m.name for m in SW}
    assert len({int(m) for m in SW}) == len(list(SW))
    for member in SW:
        assert 0x6000 <= member <= 0x9FFF


@pytest.mark.parametrize(
    ("code", "family"),
    [
        (0x6112, SW.BYTES_REMAINING),
        (0x6100, SW.BYTES_REMAINING),
        (0x61FF, SW.BYTES_REMAINING),
        (0x6C05, SW.WRONG_LE),
        (0x6C00, SW.WRONG_LE),
        (0x63C2, SW.VERIFY_FAILED),
        (0x63CF, SW.VERIFY_FAILED),
        (0x9000, SW.OK),
        (0x6A82, SW.FILE_NOT_FOUND),
        (0x1234, None),
        (0x63D2, None),
        (0x6A99, None),
        (0x9001, None),
    ],
)
def test_family(code: int, family: SW | None) -> None:
    assert SW.family(code) is family


def test_describe_families_mention_counts() -> None:
    assert "18" in describe(0x6112)
    assert "more response bytes" in describe(0x6112)
    assert "256" in describe(0x6100)
    assert "5" in describe(0x6C05)
    assert "exact length is 5" in describe(0x6C05)
    assert "256" in describe(0x6C00)
    assert "2 tries left" in describe(0x63C2)
    assert "0 tries left" in describe(0x63C0)
    assert "15 tries left" in describe(0x63CF)


def test_describe_fixed_and_unknown() -> None:
    assert describe(0x9000) == "success"
    assert describe(SW.FILE_NOT_FOUND) == "file or application not found"
    assert describe(0x1234) == "unknown status word"
    for member in SW:
        text = describe(member)
        assert text
        assert text != "unknown status word"


def test_helper_constructors() -> None:
    assert SW.bytes_remaining(300) == 0x6100
    assert SW.bytes_remaining(256) == 0x6100
    assert SW.bytes_remaining(0x18) == 0x6118
    assert SW.bytes_remaining(255) == 0x61FF
    assert SW.wrong_le(256) == 0x6C00
    assert SW.wrong_le(0x18) == 0x6C18
    assert SW.tries_left(2) == 0x63C2
    assert SW.tries_left(0) == 0x63C0
    assert SW.tries_left(15) == 0x63CF
    assert SW.tries_left(99) == 0x63CF


@pytest.mark.parametrize("sw", [0x6A82, 0x6112, 0x63C1, 0x1234, 0x6F00])
def test_card_error_carries_sw(sw: int) -> None:
    err = CardError(sw)
    assert err.sw == sw
    assert err.family is SW.family(sw)
    assert err.detail is None
    text = str(err)
    assert text.startswith(f"{sw:04X}")
    assert text[:4] == f"{sw:04X}"
    assert describe(sw) in text


def test_card_error_with_message() -> None:
    err = CardError(SW.WRONG_LENGTH, "ADD takes 4 bytes")
    assert err.sw == 0x6700
    assert err.detail == "ADD takes 4 bytes"
    assert str(err) == "6700: ADD takes 4 bytes"
    with pytest.raises(CardError) as info:
        raise err
    assert info.value.sw == SW.WRONG_LENGTH
