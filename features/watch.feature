Feature: Watching keys
  As a user with curl, I watch a key and see each change arrive as it is made
  (Server-Sent Events from /_watch); after a break I resume from the last event's id
  and get exactly what I missed.

  Scenario: A watcher sees a change arrive, and resumes from the last event's id
    Given I start watching /w
    When I PUT "hello" to /w
    Then a put of /w to "hello" arrives
    When I close the watch
    And I PUT "again" to /w
    And I DELETE /w
    And I start watching /w again from the last event's id
    Then a put of /w to "again" arrives
    And a delete of /w arrives
