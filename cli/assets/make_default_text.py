#!/usr/bin/env python3
"""Builds cli/assets/default-data.txt, the text the embedded default run analyses.

The prose comes from "The Rust Programming Language" (Steve Klabnik, Carol Nichols and
Chris Krycho, with contributions from the Rust community), which the Rust toolchain ships
as HTML under share/doc/rust/html/book and which is licensed MIT OR Apache-2.0, so it may
be redistributed with its notice (cli/assets/DEFAULT-DATA-NOTICE.md). Code listings are
dropped; paragraphs are separated by blank lines.

Usage: python3 make_default_text.py [BOOK_HTML_DIR] > default-data.txt
"""
import glob
import os
import sys
from html.parser import HTMLParser

BLOCK_TAGS = ("p", "li", "h1", "h2", "h3", "h4")
SKIPPED_TAGS = ("pre", "script", "style", "table")


class ChapterText(HTMLParser):
    """Collects the prose blocks inside <main>, leaving code out."""

    def __init__(self):
        super().__init__()
        self.blocks = []
        self.current = None
        self.in_main = False
        self.skip_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.in_main = True
        if not self.in_main:
            return
        if tag in SKIPPED_TAGS:
            self.skip_depth += 1
        elif tag in BLOCK_TAGS and self.skip_depth == 0 and self.current is None:
            self.current = []

    def handle_endtag(self, tag):
        if not self.in_main:
            return
        if tag == "main":
            self.in_main = False
        elif tag in SKIPPED_TAGS:
            self.skip_depth -= 1
        elif tag in BLOCK_TAGS and self.current is not None:
            text = " ".join("".join(self.current).split())
            if len(text) > 1:
                self.blocks.append(text)
            self.current = None

    def handle_data(self, data):
        if self.current is not None and self.skip_depth == 0:
            self.current.append(data)


def main():
    default_dir = os.path.expanduser(
        "~/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu/share/doc/rust/html/book"
    )
    book_dir = sys.argv[1] if len(sys.argv) > 1 else default_dir
    limit_chars = 400_000
    chapters = []
    total = 0
    for path in sorted(glob.glob(os.path.join(book_dir, "ch*.html"))):
        parser = ChapterText()
        with open(path, encoding="utf-8") as f:
            parser.feed(f.read())
        text = "\n\n".join(parser.blocks)
        if not text:
            continue
        chapters.append(text)
        total += len(text)
        if total >= limit_chars:
            break
    sys.stdout.write("\n\n".join(chapters) + "\n")


if __name__ == "__main__":
    main()
