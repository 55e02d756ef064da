"""Readers of real event sources: each maps one source's columns onto the event contract.

A reader returns `RawEvents`: candidate rows under the contract's column names, each row's line in the
file, the source rows themselves (for the rejects file) and counters of rows left out on purpose.
`validate_raw` then runs them through the one validator, `features.validate.validate_events`. Readers
decide only what the source means; every rule of the contract is checked there.

Line numbers are physical lines of the file (header = line 1), for gzip files too: quoted fields that
span lines are counted, blank lines are counted and skipped (`skipped["blank_line"]`), and rows with the
wrong number of fields are rejected as `malformed_row` at their own line.

Sources and the decisions taken for each (see also `features.ingest`):

- RetailRocket (`read_retailrocket`): view / addtocart / transaction -> product_view / add_to_cart /
  purchase; the timestamp is epoch milliseconds; `transactionid` (written like 14418.0) becomes
  `session_id`, since it groups the items of one transaction and so is not unique per row. The file has
  no event id: `event_id` is visitor:timestamp:event:item, so an exact repeat of a row is rejected as
  `duplicate_event_id` (the sample has one such row).
- REES46 (`read_rees46`): view / cart / remove_from_cart / purchase -> product_view / add_to_cart /
  remove_from_cart / purchase; `category` is `category_code` when present, else `category_id`;
  `value` is the price, `session_id` the user session; `event_id` is session:time:event:product.
- UCI Online Retail (`read_online_retail`), invoice lines, UK local time (Europe/London). Rows are left
  out, and counted, in this order: a stock code that is not a product (`non_product:<CODE>`, products
  being 5 digits plus optional letters, or DCGS codes), a line without a customer (`guest_line`: a
  guest checkout cannot be attributed to anyone), a line with a negative quantity on an invoice that is
  not a cancellation (`stock_adjustment`: stock write-offs, not a customer's refund). The rest: invoices
  starting with C are `refund` (value and quantity as absolute amounts), others `purchase` with
  value = Quantity x UnitPrice. Stock codes are upper-cased (15056bl and 15056BL are one product);
  `session_id` is the invoice and `event_id` is invoice:position of the line in the invoice, so
  re-ingesting is idempotent and repeated identical lines of one invoice stay separate lines.
- Generic CSV / Parquet (`read_generic`) with a `ColumnMapping` (columns, constants, value maps, ts
  format / unit / time zone; from YAML or `field=column` pairs); without one, columns named like
  contract fields feed those fields. Parquet rows have no lines: the number reported is the row number
  (1-based).

The package: `raw` (what every reader returns, `validate_raw`, the Arrow string helpers the readers share),
`csv_lines` (CSV with exact line numbers), one module per source (`retailrocket`, `rees46`,
`online_retail`) and `generic` (any CSV or Parquet file with a `ColumnMapping`).
"""

from features.sources.csv_lines import read_csv_header, read_csv_rows
from features.sources.generic import ColumnMapping, MappingError, read_generic
from features.sources.online_retail import read_online_retail
from features.sources.raw import RawEvents, SourceFormatError, validate_raw
from features.sources.rees46 import read_rees46
from features.sources.retailrocket import read_retailrocket

__all__ = [
    "ColumnMapping",
    "MappingError",
    "RawEvents",
    "SourceFormatError",
    "read_csv_header",
    "read_csv_rows",
    "read_generic",
    "read_online_retail",
    "read_rees46",
    "read_retailrocket",
    "validate_raw",
]
