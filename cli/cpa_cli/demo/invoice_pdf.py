"""The demo portal's invoice PDF: a realistic monthly invoice, byte for byte the same every time.

The forward_invoice demo proves that the mail that arrives carries exactly the PDF the portal
served, by its sha256. So the PDF is a pure function of the month: fixed creation date (fpdf2
derives the file id from it), fixed content, core fonts only (nothing read from the machine).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from fpdf import FPDF

MONTH_PATTERN = re.compile(r"^(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])$")
VAT_RATE = Decimal("0.19")
PAYMENT_TERMS_DAYS = 30
_CENT = Decimal("0.01")

SUPPLIER = (
    "Northwind Office Supplies GmbH",
    "Hafenstrasse 12",
    "20457 Hamburg, Germany",
    "VAT ID DE 123 456 789",
)
CUSTOMER = (
    "ACME Accounting Ltd",
    "Accounts Payable",
    "1 Ledger Lane",
    "London EC2A 4NE, United Kingdom",
)


class UnknownMonthError(ValueError):
    """A month that is not YYYY-MM (01-12)."""


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    description: str
    quantity: int
    unit_price: Decimal

    @property
    def amount(self) -> Decimal:
        return (self.unit_price * self.quantity).quantize(_CENT, ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Invoice:
    """One month's invoice as the portal lists it and prints it."""

    month: str
    number: str
    issued: date
    due: date
    lines: tuple[InvoiceLine, ...]

    @property
    def net(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0.00"))

    @property
    def vat(self) -> Decimal:
        return (self.net * VAT_RATE).quantize(_CENT, ROUND_HALF_UP)

    @property
    def total(self) -> Decimal:
        return self.net + self.vat

    @property
    def filename(self) -> str:
        return f"invoice-{self.month}.pdf"


def parse_month(month: str) -> tuple[int, int]:
    """(year, month) of `YYYY-MM`; UnknownMonthError otherwise."""
    match = MONTH_PATTERN.fullmatch(month)
    if match is None:
        raise UnknownMonthError(f"month must be YYYY-MM, got {month!r}")
    return int(match["year"]), int(match["month"])


def invoice_for(month: str) -> Invoice:
    """The month's invoice: quantities vary with the month, so each month's PDF differs."""
    year, number = parse_month(month)
    issued = date(year, number, calendar.monthrange(year, number)[1])
    lines = (
        InvoiceLine("Copy paper A4, 80 g/m2, box of 5 reams", 4 + number % 3, Decimal("23.90")),
        InvoiceLine("Toner cartridge, black, TN-2420", 1 + number % 2, Decimal("64.50")),
        InvoiceLine("Office chair maintenance, monthly flat fee", 1, Decimal("45.00")),
        InvoiceLine("Delivery", 1, Decimal("9.90")),
    )
    return Invoice(
        month=month,
        number=f"NW-{year}{number:02d}-{1000 + (year * 12 + number) % 9000}",
        issued=issued,
        due=issued + timedelta(days=PAYMENT_TERMS_DAYS),
        lines=lines,
    )


def money(amount: Decimal) -> str:
    return f"EUR {amount:,.2f}"


def render_pdf(invoice: Invoice) -> bytes:
    """The invoice as PDF bytes; the same bytes for the same invoice, on any machine."""
    pdf = FPDF(format="A4")
    # Creation date and (derived from it) the file id are the only varying parts of a PDF.
    pdf.set_creation_date(datetime.combine(invoice.issued, datetime.min.time(), tzinfo=UTC))
    pdf.set_title(f"Invoice {invoice.number}")
    pdf.set_author(SUPPLIER[0])
    pdf.set_subject(f"Invoice for {invoice.month}")
    pdf.set_margins(20, 20, 20)
    pdf.add_page()

    pdf.set_font("helvetica", "B", 16)
    pdf.cell(0, 8, SUPPLIER[0], new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 9)
    for line in SUPPLIER[1:]:
        pdf.cell(0, 4.5, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)

    pdf.set_font("helvetica", "", 10)
    for line in CUSTOMER:
        pdf.cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)

    pdf.set_font("helvetica", "B", 14)
    pdf.cell(0, 8, f"Invoice {invoice.number}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 10)
    facts = (
        ("Billing period", invoice.month),
        ("Invoice date", invoice.issued.isoformat()),
        ("Due date", invoice.due.isoformat()),
    )
    for label, value in facts:
        pdf.cell(40, 5.5, label)
        pdf.cell(0, 5.5, value, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)

    widths = (90, 18, 31, 31)
    pdf.set_font("helvetica", "B", 10)
    pdf.set_fill_color(230, 230, 230)
    for width, title, align in zip(
        widths, ("Description", "Qty", "Unit price", "Amount"), "LRRR", strict=True
    ):
        pdf.cell(width, 7, title, border=1, align=align, fill=True)
    pdf.ln()
    pdf.set_font("helvetica", "", 10)
    for item in invoice.lines:
        cells = (item.description, str(item.quantity), money(item.unit_price), money(item.amount))
        for width, text, align in zip(widths, cells, "LRRR", strict=True):
            pdf.cell(width, 7, text, border=1, align=align)
        pdf.ln()
    label_width = sum(widths[:3])
    for label, amount, style in (
        ("Net", invoice.net, ""),
        (f"VAT {VAT_RATE * 100:.0f} %", invoice.vat, ""),
        ("Total due", invoice.total, "B"),
    ):
        pdf.set_font("helvetica", style, 10)
        pdf.cell(label_width, 7, label, align="R")
        pdf.cell(widths[3], 7, money(amount), border=1, align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(10)
    pdf.set_font("helvetica", "", 9)
    pdf.multi_cell(
        0,
        4.5,
        f"Please pay {money(invoice.total)} by {invoice.due.isoformat()} to IBAN "
        f"DE89 3704 0044 0532 0130 00, quoting {invoice.number}. Thank you for your business.",
    )
    return bytes(pdf.output())
