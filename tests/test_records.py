"""Records: the dict form of the public contract, with and without a loaded document."""

from livesync.records import Record


def test_a_record_without_a_document_has_no_document_key() -> None:
    record = Record("event", 42, "deleted", ("deleted",), 7, 1_000)
    assert record.document is None
    assert "document" not in record.to_dict()


def test_a_record_with_a_document_round_trips_through_its_dict() -> None:
    record = Record("event", "e-1", "created", ("created",), 3, 2_000, {"title": "Kickoff", "tags": ["a"]})
    data = record.to_dict()
    assert data["document"] == {"title": "Kickoff", "tags": ["a"]}
    assert Record.from_dict(data) == record
