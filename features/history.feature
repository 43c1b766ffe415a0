Feature: Write history
  Every write of the last two minutes is listed, newest first, with deletes as null.

  Scenario: History lists writes newest first, deletes as null
    When I PUT "one" to /h
    And I PUT "two" to /h
    And I DELETE /h
    And I PUT "three" to /h
    And I GET /h/history
    Then the status is 200
    And the history values are ["three", null, "two", "one"]

  Scenario: A failed delete leaves no trace in history
    Given /h holds "v"
    When I DELETE /h
    And I DELETE /h
    Then the status is 404
    When I GET /h/history
    Then the history values are [null, "v"]

  @short_window
  Scenario: History forgets writes older than the window, but not the value
    Given a kvservice whose history window is a few seconds
    And /old holds "stale"
    When the history window passes
    And I PUT "fresh" to /old
    And I GET /old/history
    Then the history values are ["fresh"]
    When the history window passes
    And I GET /old/history
    Then the history is empty
    When I GET /old
    Then the body is "fresh"
