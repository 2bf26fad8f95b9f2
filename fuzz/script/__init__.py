"""The op-script language (SPEC §4): the data model of ops and expects, the parser and the
printer. It runs nothing; the judge, the engine and the front all meet here."""
