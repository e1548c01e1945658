"""`format` values as languages over decoded characters (what the string holds, unescaped).

date, time, date-time (real calendar; second 60 only at 23:59:60 UTC), duration, uuid, ipv4,
ipv6, email, hostname (labels; the 253-character total is not checked), uri, uri-reference,
json-pointer, relative-json-pointer; others are refused here (`json_dialects` decides which
reach this module).
"""

from __future__ import annotations

from .ir import MAX_CODE_POINT, Chars, Node, Repeat, alt, chars, choice, lit, opt, plus, seq, star
from .json_keywords import refuse
from .json_lexical import DIGIT, FRAC, digits, fixed_width, natural

FORMATS = frozenset(
    {
        "date", "time", "date-time", "duration", "uuid", "ipv4", "ipv6", "email", "hostname",
        "uri", "uri-reference", "json-pointer", "relative-json-pointer",
    }
)  # fmt: skip  # the formats `format_node` builds


def format_node(name: str, cache: dict[str, Node]) -> Node:
    """The language of `format` `name`; refuses the formats not listed above.

    `cache` is the caller's (one per schema compile): each format is built once, so a format used
    twice is one node (callers memoize by node identity) and `time` (tens of ms) is not rebuilt.
    """
    if name not in cache:
        cache[name] = _build(name, cache)
    return cache[name]


def _build(name: str, cache: dict[str, Node]) -> Node:
    if name == "date-time":
        between = chars([(0x54, 0x54), (0x74, 0x74)])  # "T" or "t"
        return seq(format_node("date", cache), between, format_node("time", cache))
    if name in ("uri", "uri-reference", "ipv6"):
        return _uri_parts()[name]
    if name == "relative-json-pointer":
        return seq(natural(0, None), alt(lit("#"), format_node("json-pointer", cache)))
    if name == "email":
        return _email(format_node("ipv6", cache))
    builders = {"date": _date, "time": _time, "ipv4": _ipv4, "uuid": _uuid, "hostname": _hostname}
    builders |= {"json-pointer": _json_pointer, "duration": _duration}
    if name not in builders:
        raise refuse(f"'format' {name!r} is not supported")
    return builders[name]()


def _two(lo: int, hi: int) -> Node:
    return fixed_width(lo, hi, 2)


def _date() -> Node:
    year = Repeat(DIGIT, 4, 4)
    fours = [f"{n:02d}" for n in range(4, 100, 4)]
    leap = alt(seq(DIGIT, DIGIT, choice(fours)), seq(choice(["00", *fours]), lit("00")))
    day_29_30 = seq(alt(lit("01"), _two(3, 12)), lit("-"), choice(["29", "30"]))
    day_31 = seq(choice(["01", "03", "05", "07", "08", "10", "12"]), lit("-31"))
    month_day = alt(seq(_two(1, 12), lit("-"), _two(1, 28)), day_29_30, day_31)
    return alt(seq(year, lit("-"), month_day), seq(leap, lit("-02-29")))


def _time() -> Node:
    """RFC 3339 full-time; second 60 only where the time is 23:59:60 UTC."""
    hour, minute = _two(0, 23), _two(0, 59)
    frac = opt(FRAC)
    zulu = chars([(0x5A, 0x5A), (0x7A, 0x7A)])
    offset = alt(zulu, seq(chars([(43, 43), (45, 45)]), hour, lit(":"), minute))
    normal = seq(hour, lit(":"), minute, lit(":"), _two(0, 59), frac, offset)
    leap_hours = []
    for h in range(24):
        minutes = []
        for m in range(60):
            local = 60 * h + m  # UTC 23:59 = local - offset, so offset = local - 23:59 (mod 24h)
            east, west = (local + 1) % 1440, (1439 - local) % 1440
            offsets = [lit(f"+{east // 60:02d}:{east % 60:02d}")]
            offsets.append(lit(f"-{west // 60:02d}:{west % 60:02d}"))
            if local == 1439:
                offsets.append(zulu)
            minutes.append(seq(lit(f"{m:02d}:60"), frac, alt(*offsets)))
        leap_hours.append(seq(lit(f"{h:02d}:"), alt(*minutes)))
    return alt(normal, *leap_hours)


def _email(ipv6: Node) -> Node:
    """RFC 5321 Mailbox: dot-atom or quoted local part @ host name or address literal.

    Host-name labels have 1-63 letters, digits or inner hyphens; the overall length limits of
    RFC 5321 section 4.5.3.1 are not modelled.
    """
    alnum = chars([(48, 57), (65, 90), (97, 122)])
    atom = plus(_set(b"!#$%&'*+-/=?^_`{|}~", (48, 57), (65, 90), (97, 122)))
    qtext = chars([(32, 33), (35, 91), (93, 126)])
    quoted = seq(lit('"'), star(alt(qtext, seq(lit("\\"), chars([(32, 126)])))), lit('"'))
    local = alt(seq(atom, star(seq(lit("."), atom))), quoted)
    label = seq(alnum, opt(seq(Repeat(alt(alnum, lit("-")), 0, 61), alnum)))
    literal = seq(lit("["), alt(_ipv4(), seq(lit("IPv6:"), ipv6)), lit("]"))
    return seq(local, lit("@"), alt(seq(label, star(seq(lit("."), label))), literal))


def _set(text: bytes, *ranges: tuple[int, int]) -> Chars:
    return chars([(c, c) for c in text] + list(ranges))


def _uri_parts() -> dict[str, Node]:
    """RFC 3986 pieces (ASCII only: IRIs are not URIs)."""
    alnum = [(48, 57), (65, 90), (97, 122)]
    hex_ = digits(0, 15, 16)
    pct = seq(lit("%"), hex_, hex_)
    unreserved_sub = _set(b"-._~!$&'()*+,;=", *alnum)
    pchar = alt(_set(b"-._~!$&'()*+,;=:@", *alnum), pct)
    segment = star(pchar)
    h16 = Repeat(hex_, 1, 4)
    ls32 = alt(seq(h16, lit(":"), h16), _ipv4())
    c_h16 = seq(h16, lit(":"))
    ipv6 = alt(
        seq(Repeat(c_h16, 6, 6), ls32),
        seq(lit("::"), Repeat(c_h16, 5, 5), ls32),
        *(
            seq(opt(seq(Repeat(c_h16, 0, k), h16)), lit("::"), Repeat(c_h16, 4 - k, 4 - k), ls32)
            for k in range(5)
        ),
        seq(opt(seq(Repeat(c_h16, 0, 5), h16)), lit("::"), h16),
        seq(opt(seq(Repeat(c_h16, 0, 6), h16)), lit("::")),
    )
    future = seq(lit("v"), plus(hex_), lit("."), plus(alt(unreserved_sub, lit(":"))))
    host = alt(seq(lit("["), alt(ipv6, future), lit("]")), star(alt(unreserved_sub, pct)))
    userinfo = star(alt(unreserved_sub, pct, lit(":")))
    authority = seq(opt(seq(userinfo, lit("@"))), host, opt(seq(lit(":"), star(DIGIT))))
    slash_segments = star(seq(lit("/"), segment))
    absolute = seq(lit("/"), opt(seq(plus(pchar), slash_segments)))
    query = star(alt(pchar, _set(b"/?")))  # fragment: the same characters
    tail = seq(opt(seq(lit("?"), query)), opt(seq(lit("#"), query)))
    scheme = seq(chars(alnum[1:]), star(_set(b"+-.", *alnum)))
    hier = alt(
        seq(lit("//"), authority, slash_segments), absolute, opt(seq(plus(pchar), slash_segments))
    )
    nc = alt(_set(b"-._~!$&'()*+,;=@", *alnum), pct)  # a first segment without ':'
    relative = alt(
        seq(lit("//"), authority, slash_segments), absolute, opt(seq(plus(nc), slash_segments))
    )
    uri = seq(scheme, lit(":"), hier, tail)
    return {"uri": uri, "uri-reference": alt(uri, seq(relative, tail)), "ipv6": ipv6}


def _json_pointer() -> Node:
    unescaped = chars([(0, 0x2E), (0x30, 0x7D), (0x7F, MAX_CODE_POINT)])
    return star(seq(lit("/"), star(alt(unescaped, seq(lit("~"), _set(b"01"))))))


def _duration() -> Node:
    """ISO 8601 durations as RFC 3339 appendix A writes them."""
    n = plus(DIGIT)
    second = seq(n, lit("S"))
    minute = seq(n, lit("M"), opt(second))
    hour = seq(n, lit("H"), opt(minute))
    time = seq(lit("T"), alt(hour, minute, second))
    day = seq(n, lit("D"))
    month = seq(n, lit("M"), opt(day))
    year = seq(n, lit("Y"), opt(month))
    return seq(lit("P"), alt(seq(alt(day, month, year), opt(time)), time, seq(n, lit("W"))))


def _hostname() -> Node:
    """RFC 1123 names: dot-separated labels of 1-63 letters, digits and inner hyphens."""
    alnum = _set(b"", (0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A))
    inner = _set(b"-", (0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A))
    label = seq(alnum, opt(seq(Repeat(inner, 0, 61), alnum)))
    return seq(label, star(seq(lit("."), label)))


def _ipv4() -> Node:
    octet = natural(0, 255)
    return seq(octet, Repeat(seq(lit("."), octet), 3, 3))


def _uuid() -> Node:
    hex_ = digits(0, 15, 16)
    groups = [Repeat(hex_, n, n) for n in (8, 4, 4, 4, 12)]
    return seq(*(seq(lit("-"), g) if i else g for i, g in enumerate(groups)))
