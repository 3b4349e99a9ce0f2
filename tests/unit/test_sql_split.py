from ebbtide.sql import split_statements


def test_split_keeps_semicolons_and_dashes_inside_quotes():
    text = (
        "-- header comment\n"
        "SELECT 'a;b' AS x, \"c--d\" AS y; -- trailing\n"
        "SELECT `we;ird` FROM t WHERE s = 'it\\'s; fine'\n"
        ";\n"
    )
    assert split_statements(text) == [
        "SELECT 'a;b' AS x, \"c--d\" AS y",
        "SELECT `we;ird` FROM t WHERE s = 'it\\'s; fine'",
    ]


def test_empty_statements_dropped():
    assert split_statements(" ; ;\n-- only a comment\n") == []
