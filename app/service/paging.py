"""The total of a paged list, as SQL shared by every list statement (tasks, tags,
conversations, messages): each answers one page and the count of all the rows it pages
through, which the routes send as X-Total-Count."""


def page_total(rows: str, count: str, limit: str, offset: str) -> str:
    """The list's total: `rows`, the page's row count; `count`, a query counting every
    row; `limit` and `offset`, the page's parameters.

    A page cut short by the end of the rows (and not an empty one past that end, unless
    it is the first) ends where they do: the offset and the page's rows number them. Then
    `count` is not run at all, neither its scan nor its tables' checks of the signed
    context by row-level security; most users' lists are one short page.
    """
    return (
        f"case when {rows} < {limit} and ({rows} > 0 or {offset} = 0) then {offset} + {rows}"
        f" else ({count}) end"
    )
