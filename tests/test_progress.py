"""Progress in a log file: a handful of plain lines per task, never carriage-return frames."""

from npgmf_edge.progress import Reporter


def test_a_task_writes_its_start_a_line_per_tenth_its_notes_and_its_end(capsys) -> None:
    with Reporter("coreset", 100, unit="picks") as progress:  # stderr is not a terminal under pytest
        for i in range(100):
            progress.advance(status=f"pick {i}")
            if i == 49:
                progress.note("half way")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[npgmf-edge] coreset: 100 picks"
    assert [line.split(" (")[0] for line in lines[1:6]] == [
        f"[npgmf-edge] coreset: {n}/100" for n in range(10, 60, 10)
    ]
    assert lines[6] == "[npgmf-edge] half way"
    assert len(lines) == 1 + 9 + 1 + 1  # start, 10..90, the note, done
    assert lines[-1].startswith("[npgmf-edge] coreset: done in ")
    assert "\r" not in "".join(lines)


def test_a_disabled_reporter_is_silent(capsys) -> None:
    with Reporter("quiet", 10, enabled=False) as progress:
        progress.advance(10)
        progress.note("not shown")
    assert capsys.readouterr().err == ""
