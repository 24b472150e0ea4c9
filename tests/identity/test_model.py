"""The saved Splink model: it loads, its parameters look like a person model, and it scores known pairs.

Uses identity/models/person_v1.json as committed; does not retrain (that is `cdp identity train`).
"""

from __future__ import annotations

import json

from identity.model import MODEL_PATH, check_parameters, probability_to_weight, score_units

THRESHOLD = probability_to_weight(0.99)


def test_saved_model_is_a_trained_person_model():
    model = json.loads(MODEL_PATH.read_text())
    assert [c["output_column_name"] for c in model["comparisons"]] == ["name", "dob", "email", "phone", "location"]
    assert check_parameters(model) == []


def test_saved_model_scores_a_duplicate_above_and_a_neighbour_below_threshold(idcon, stg, rec_):
    stg(
        [
            rec_("crm", "c1", first_name="katherine", last_name="jones", date_of_birth="1961-05-10",
                 postcode="SW1A1AA", address_line1="12 high street"),
            rec_("crm", "c2", first_name="kathy", last_name="jones", date_of_birth="1961-10-05",
                 postcode="SW1A1AA", address_line1="12 high st"),  # nickname, day/month swapped, abbreviation
            rec_("crm", "c3", first_name="robert", last_name="jones", date_of_birth="1990-02-03",
                 postcode="SW1A1AA", address_line1="12 high street"),  # same house, another person
        ]
    )  # fmt: skip
    # scored as in a store of the size the model was trained on (the prior depends on the population)
    population = json.loads(MODEL_PATH.with_name("person_v1.meta.json").read_text())["n_units"]
    same = score_units(idcon, "crm:c1", "crm:c2", population=population)
    other = score_units(idcon, "crm:c1", "crm:c3", population=population)
    assert same is not None and other is not None
    assert same["match_weight"] > THRESHOLD
    assert other["match_weight"] < THRESHOLD
    assert same["comparisons"]["name"]["label"] == "Surname exact, nickname"
    assert same["comparisons"]["location"]["label"] == "Same postcode and address"
