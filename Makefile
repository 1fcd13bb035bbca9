# The two commands of the README:
#   make run   set up, load demo data and serve on http://127.0.0.1:$(PORT)/
#   make test  set up and run the whole test suite
# DATABASE_URL selects the database (default: SQLite in db.sqlite3).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed
PORT ?= 8000
SIMULATOR_PORT ?= 8900

.PHONY: run test lint venv clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: venv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py load_demo --simulator-port $(SIMULATOR_PORT) --port $(PORT)
	@# The vendor simulator answers for the demo vendors; it stops with the server.
	$(BIN)/python manage.py simulate_vendor --port $(SIMULATOR_PORT) & \
	  trap "kill $$! 2>/dev/null" EXIT INT TERM; \
	  $(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-* staticfiles test-output
