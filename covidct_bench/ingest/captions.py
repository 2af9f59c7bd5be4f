"""Figure captions -> label and patient metadata (COVID = 1 is the positive class).

``parse_caption(text)`` reads one caption (and optionally nearby body text) and returns a
``CaptionInfo``: a label with the phrase it came from, age, sex, illness day, severity, and the
caption's panel sub-labels ("(A) ... (B) ...") each with its own label, so that
"(a) COVID-19 ... (b) influenza" labels panel a positive and panel b negative.

Rules, in order:
* a mention of COVID-19 / SARS-CoV-2 / 2019-nCoV / novel coronavirus (pneumonia) is positive evidence;
* a mention of another diagnosis (community-acquired / bacterial pneumonia, influenza, tuberculosis,
  a normal or control chest, ...) or of "non-COVID" is negative evidence;
* a mention inside a negation ("non-", "negative for", "excluded", "without", "ruled out",
  "-negative") does not count for its side; "non-COVID" and "negative for COVID" count as negative;
* positive and negative evidence in one segment -> ``mixed`` (a comparison figure) unless sub-labels
  separate them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

LABELS = {1: "covid", 0: "non_covid"}

_POS = (r"covid[\s\-‐–]*19|covid(?![\s\-]*ct\b)|sars[\s\-‐–]*cov[\s\-‐–]*2|2019[\s\-‐–]*n?[\s\-]?cov|\bn[\s\-]?cov\b"
        r"|novel\s+corona\s*virus|corona\s*virus\s+disease(?:\s+2019)?|\bncp\b|\bncip\b|corona\s*virus\s+pneumonia"
        r"|wuhan\s+pneumonia")
_NEG = (r"community[\s\-‐–]*acquired\s+pneumonia|\bcap\b|influenza|\bflu\b|\bh1n1\b|\bh7n9\b|bacterial\s+pneumonia"
        r"|mycoplasma|tuberculosis|\btb\b|adenovirus|\brsv\b|respiratory\s+syncytial|pneumocystis|\bpcp\b"
        r"|fungal\s+pneumonia|aspergill\w*|\bsars\b(?![\s\-‐–]*cov)|\bmers\b|aspiration\s+pneumonia"
        r"|heart\s+failure|pulmonary\s+edema|lung\s+(?:cancer|tumou?r|adenocarcinoma)|tumou?r|interstitial\s+lung\s+disease"
        r"|(?:other|non[\s\-]*covid(?:[\s\-]*19)?)\s+(?:viral\s+)?pneumonia"
        r"|\bnormal\s+(?:chest|lungs?|ct|cases?|subjects?|controls?|individuals?|volunteers?)|healthy\s+\w+"
        r"|\bcontrols?\b(?!\s+(?:of|for)\s+(?:the\s+)?(?:disease|infection))|non[\s\-‐–]*infected")
# a negation right before a mention (same clause) flips or cancels it
_NEGATION_BEFORE = re.compile(
    r"(?:\bnon[\s\-‐–]*|\bnot\s+(?:\w+\s+){0,2}|\bno\s+(?:evidence\s+of\s+|signs?\s+of\s+)?|\bwithout\s+|"
    r"negative\s+(?:\w+\s+){0,3}?(?:for|of)\s+(?:the\s+)?|\bexclud\w*\s+|\bruled?\s+out\s+|\bother\s+than\s+|"
    r"\bfree\s+of\s+|\brather\s+than\s+|\bunlike\s+)$", re.I)
_NEGATION_AFTER = re.compile(r"^(?:[\s\-‐–]*(?:negative|free)\b|\s+(?:was|were|is|are|had\s+been|has\s+been)\s+"
                             r"(?:excluded|ruled\s+out|negative))", re.I)
_NON_COVID = re.compile(r"\bnon[\s\-‐–]*covid|negative\s+(?:\w+\s+){0,3}?for\s+(?:the\s+)?(?:covid|sars[\s\-]*cov)"
                        r"|covid[\s\-‐–]*(?:19)?[\s\-‐–]*negative|\bwithout\s+covid", re.I)

_AGE = [
    re.compile(r"\b(\d{1,3}(?:\.\d)?)\s*[\-‐–]?\s*(?:years?|yrs?|y)\s*[\-‐–]?\s*(?:old|of\s+age)\b", re.I),
    re.compile(r"\b(\d{1,3})\s*[\-‐–]?\s*(?:years?|yrs?|yo|y/o|y)\b(?!\s*(?:ago|later|after|before))"
               r"(?=[\s,;]*(?:old|male|female|man|woman|boy|girl|patient|\(?[MF]\b))", re.I),
    re.compile(r"\b(\d{1,3})\s*(?:years?|yrs?)\b(?=\s*[),;])", re.I),  # "(IP: C56, 57 years)"
    re.compile(r"\baged?\s*(?:of\s*|:\s*|=\s*)?(\d{1,3})\b", re.I),
    _MONTHS := re.compile(r"\b(\d{1,3})\s*[\-‐–]?\s*(?:months?|mos?)\s*[\-‐–]?\s*old\b", re.I),  # -> years
    re.compile(r"\b(\d{1,3})\s*(?:/\s*)?([MF])\b(?![a-z])"),  # 45M, 45/F
    re.compile(r"\b([MF])\s*/\s*(\d{1,3})\b"),  # M/45
]
_SEX = re.compile(r"\b(?:(?P<m>man|men|male|boy|gentleman|husband|father|son)|(?P<f>woman|women|female|girl|lady|"
                  r"wife|mother|daughter|pregnant))\b", re.I)
_DAY = [
    re.compile(r"\billness\s+day\s*(\d{1,3})\b", re.I),
    re.compile(r"\bday\s*(\d{1,3})(?:\s*[\-‐–]\s*\d{1,3})?\s+(?:after|from|since|of)\s+(?:the\s+)?(?:symptoms?\s+|illness\s+|"
               r"disease\s+|fever\s+)?onset", re.I),
    re.compile(r"\b(\d{1,3})(?:st|nd|rd|th)\s+day\s+(?:of|after)\s+(?:the\s+)?(?:course\s+of\s+(?:the\s+)?)?"
               r"(?:disease|illness|onset|symptom)", re.I),
    re.compile(r"\b(\d{1,3})\s+days?\s+(?:after|from|since)\s+(?:the\s+)?(?:symptoms?\s+|illness\s+|disease\s+)?onset", re.I),
    re.compile(r"\bon\s+day\s*(\d{1,3})\b", re.I),
]
_SEVERITY = [("critical", re.compile(r"\bcritical(?:ly\s+ill)?\b|\bcritical\s+type\b", re.I)),
             ("severe", re.compile(r"\bsevere\b|\bsevere\s+type\b", re.I)),
             ("moderate", re.compile(r"\bmoderate\b|\bcommon\s+type\b|\bordinary\s+type\b", re.I)),
             ("mild", re.compile(r"\bmild\b|\bmild\s+type\b", re.I))]
FIGURE_START = re.compile(r"^\s*(?:fig(?:ure)?s?|FIG(?:URE)?S?)\s*\.?\s*(S?\d+[A-Za-z]?)\s*(?=[.:|\-‐–—,)]|\s+[A-Z(\[])",
                          re.I)
# panel markers: "(A)", "(a)", "(A–C)", "(A and B)", "A)", "Panel A", or a letter opening a sentence:
# "A. ", "A, ", "a Chest ..."
_MARKER = re.compile(r"\(\s*([A-Ha-h])(?:\s*(?:[\-‐–,&]|and)\s*([A-Ha-h]))?\s*\)"
                     r"|(?:(?<=^)|(?<=[.;:]\s)|(?<=[.;:]))\s*([A-Ha-h])\s*(?:[.,:)]\s+|\s+(?=[A-Z]))"
                     r"|(?<![\w(])([a-h])\)\s"
                     r"|\bpanel\s+([A-Ha-h])\b", re.I)
@dataclass
class PanelText:
    letter: str
    text: str
    label: int | None
    label_text: str
    age: float | None = None
    sex: str | None = None


@dataclass
class CaptionInfo:
    """What a caption says. ``label``: 1 COVID, 0 non-COVID, None when unknown or mixed."""

    label: int | None
    label_text: str  # covid | non_covid | mixed | unknown
    confidence: float
    evidence: str | None = None
    age: float | None = None
    sex: str | None = None
    illness_day: int | None = None
    severity: str | None = None
    figure_number: str | None = None
    panels: list[PanelText] = field(default_factory=list)

    def panel_label(self, letter: str | None) -> tuple[int | None, str]:
        """Label for panel ``letter`` (and where it came from): its sub-caption, else the whole caption."""
        if letter:
            for p in self.panels:
                if p.letter.lower() == letter.lower() and p.label is not None:
                    return p.label, "caption_panel"
        return self.label, ("caption" if self.label is not None else "none")

    def to_dict(self) -> dict:
        return asdict(self)


def _mentions(text: str) -> list[tuple[int, int, str]]:
    """(start, side, phrase) for every non-negated label mention; side 1 positive, 0 negative."""
    non_covid = list(_NON_COVID.finditer(text))
    out = [(m.start(), 0, m.group(0)) for m in non_covid]
    taken = [(m.start(), m.end()) for m in non_covid]
    for side, pat in ((1, _POS), (0, _NEG)):
        for m in re.finditer(pat, text, re.I):
            if any(a <= m.start() < b for a, b in taken):
                continue
            before = text[max(0, m.start() - 40):m.start()]
            if _NEGATION_BEFORE.search(before) or _NEGATION_AFTER.match(text[m.end():m.end() + 40]):
                continue
            out.append((m.start(), side, m.group(0)))
    return sorted(out)


def _label(text: str) -> tuple[int | None, str, float, str | None]:
    ms = _mentions(text)
    sides = {s for _, s, _ in ms}
    if not ms:
        return None, "unknown", 0.0, None
    if len(sides) == 2:
        return None, "mixed", 0.5, "; ".join(sorted({p for _, _, p in ms}))
    side = sides.pop()
    n = len(ms)
    conf = min(0.99, 0.8 + 0.07 * (n - 1))
    return side, LABELS[side], conf, ms[0][2]


def parse_age(text: str) -> float | None:
    best = None
    for pat in _AGE:
        for m in pat.finditer(text):
            groups = [g for g in m.groups() if g and g.replace(".", "", 1).isdigit()]
            if not groups:
                continue
            value = float(groups[0])
            if pat is _MONTHS:
                value = round(value / 12.0, 2)
            if 0 <= value <= 110 and (best is None or m.start() < best[0]):
                best = (m.start(), value)
            break
    return None if best is None else best[1]


def parse_sex(text: str) -> str | None:
    m = _SEX.search(text)
    if m:
        return "M" if m.group("m") else "F"
    m = re.search(r"\b\d{1,3}\s*/?\s*([MF])\b(?![a-z])|\b([MF])\s*/\s*\d{1,3}\b", text)
    if m:
        return m.group(1) or m.group(2)
    return None


def parse_day(text: str) -> int | None:
    for pat in _DAY:
        m = pat.search(text)
        if m:
            return int(m.group(1))
    return None


def parse_severity(text: str) -> str | None:
    hits = [(m.start(), name) for name, pat in _SEVERITY for m in [pat.search(text)] if m]
    return min(hits)[1] if hits else None


def split_panels(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Shared text and (letter, text) per panel sub-label, in caption order.

    Leading markers ("(A) GGO ... (B) ...") own the text after them; trailing markers ("... GGO (A).
    Consolidation (B).", detected when the caption ends on a marker) own the text before them. A
    range "(B-D)" or "(A and B)" gives each letter the same text. Only a non-decreasing chain of
    letters is kept, so a stray token does not split.
    """
    found = []
    for m in _MARKER.finditer(text):
        a = next(g for g in (m.group(1), m.group(3), m.group(4), m.group(5)) if g)
        b = m.group(2)
        letters = [chr(c) for c in range(ord(a.upper()), ord(b.upper()) + 1)] if b and b.upper() >= a.upper() else [a]
        found.append((m.start(), m.end(), [x.upper() for x in letters]))
    chain, last = [], None
    for start, end, letters in found:
        if last is None or letters[0] >= last:
            chain.append((start, end, letters))
            last = letters[-1]
    # a lone "a Chest ..." is too weak to split on; "(A)", "A, ", "A. ", "a)" and "Panel A" are not
    bare = len(chain) == 1 and re.fullmatch(r"[A-Ha-h]", text[chain[0][0]:chain[0][1]].strip()) is not None
    if not chain or bare:
        return text, []
    panels: dict[str, list[str]] = {}
    trailing = len(text[chain[-1][1]:].strip(" .;,)")) == 0
    if trailing:
        shared = text[:chain[0][0]]
        sentence = shared.rfind(". ")
        shared = shared[:sentence + 1] if sentence >= 0 else ""
        prev = len(shared)
        for start, end, letters in chain:
            seg = text[prev:start].strip(" ,;.")
            for letter in letters:
                panels.setdefault(letter, []).append(seg)
            prev = end
    else:
        shared = text[:chain[0][0]]
        for k, (start, end, letters) in enumerate(chain):
            stop = chain[k + 1][0] if k + 1 < len(chain) else len(text)
            seg = text[end:stop].strip(" ,;")
            for letter in letters:
                panels.setdefault(letter, []).append(seg)
    return shared, [(k, " ".join(v)) for k, v in panels.items()]


def parse_caption(text: str | None, nearby: str | None = None) -> CaptionInfo:
    """Label, age, sex, illness day, severity and per-panel labels of one figure caption.

    ``nearby`` (body text that cites the figure) is used only when the caption itself has no label.
    """
    text = re.sub(r"\s+", " ", text or "").strip()
    fig = FIGURE_START.match(text)
    shared, segs = split_panels(text)
    shared_label, shared_name, _, _ = _label(shared)
    panels = []
    for letter, seg in segs:
        lab, name, _, _ = _label(seg)
        if name == "unknown" and shared_label is not None:  # panels without their own words inherit
            lab, name = shared_label, shared_name
        panels.append(PanelText(letter, seg, lab, name, parse_age(seg), parse_sex(seg)))
    label, name, conf, evidence = _label(text)
    known = {p.label for p in panels}
    if name == "mixed" and len(known) == 1 and None not in known:
        # "heart failure and COVID-19. C, COVID-19 with ...": every panel says which one it is
        label = known.pop()
        name, conf = LABELS[label], 0.75
    if name == "unknown" and nearby:
        label, name, conf, evidence = _label(nearby)
        conf *= 0.6
    return CaptionInfo(label=label, label_text=name, confidence=round(conf, 3), evidence=evidence,
                       age=parse_age(text), sex=parse_sex(text), illness_day=parse_day(text),
                       severity=parse_severity(text), figure_number=fig.group(1) if fig else None, panels=panels)


def score_metadata(csv_path) -> dict:
    """Score ``parse_caption`` on COVID-CT-MetaInfo.csv: every row is a COVID image, so a decided label
    is right when it is ``covid``; age and sex are compared with the curated columns.

    Coverage = rows where the parser gave an answer / rows that have the curated value (or a caption).
    """
    import pandas as pd

    from covidct_bench.data.covid_ct import parse_age as curated_age
    from covidct_bench.data.covid_ct import parse_captions

    meta = pd.read_csv(csv_path)
    rows = []
    for raw, age, sex in zip(meta["Captions"], meta["Age"], meta["Gender"]):
        text = parse_captions(raw)
        info = parse_caption(text) if text else None
        rows.append({"has_caption": text is not None, "label": info.label_text if info else None,
                     "age": info.age if info else None, "sex": info.sex if info else None,
                     "true_age": curated_age(age), "true_sex": str(sex).strip() if isinstance(sex, str) else None})
    df = pd.DataFrame(rows)
    cap = df[df["has_caption"]]
    decided = cap[cap["label"].isin(["covid", "non_covid"])]
    out = {"rows": len(df), "captions": len(cap), "label_counts": cap["label"].value_counts().to_dict(),
           "label_coverage": round(len(decided) / max(len(cap), 1), 4),
           "label_accuracy": round(float((decided["label"] == "covid").mean()) if len(decided) else 0.0, 4)}
    for field_ in ("age", "sex"):
        truth = df[df[f"true_{field_}"].notna()]
        answered = truth[truth[field_].notna()]
        out[f"{field_}_rows"] = len(truth)
        out[f"{field_}_coverage"] = round(len(answered) / max(len(truth), 1), 4)
        out[f"{field_}_accuracy"] = round(float((answered[field_] == answered[f"true_{field_}"]).mean())
                                          if len(answered) else 0.0, 4)
    return out
