"""The experiment: its design points (``design``), the runner that strings every stage together
(``runner``), the search-cost ledger (``ledger``) and the report (``report``)."""
