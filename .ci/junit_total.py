"""Print one closing line, 'ci: N passed, N failed, N skipped', over pytest's JUnit XML files.

Usage: python .ci/junit_total.py FOLDER (every *.xml file in it).
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

passed = failed = skipped = 0
for path in sorted(Path(sys.argv[1]).glob("*.xml")):
    root = ET.parse(path).getroot()
    for suite in root.iter("testsuite"):
        tests, skips = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        passed += tests - skips - bad
        failed += bad
        skipped += skips
print(f"ci: {passed} passed, {failed} failed, {skipped} skipped")
